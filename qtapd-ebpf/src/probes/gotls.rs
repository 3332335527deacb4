//! The gotls module: Go's `crypto/tls.(*Conn).Write` and `(*Conn).Read`,
//! probed in Go executables (amd64, Go ≥ 1.17's register ABI).
//!
//! Go is not C: arguments and results travel in registers (`rax`, `rbx`,
//! `rcx`, …), the current goroutine's `g` is in `r14`, goroutines move
//! between threads while a call blocks, and stacks move as they grow. So
//! a call is keyed by its goroutine, not its thread (`GO_ACTIVE`), and its
//! return is taken by a uprobe on each of the function's `RET`
//! instructions, which qtapd finds by disassembly: a uretprobe rewrites a
//! return address on a stack Go may copy, and crashes the program.
//!
//! The fd is read at entry through the `*tls.Conn`: `conn` (a `net.Conn`)
//! → its `*net.TCPConn` → `*netFD` → `pfd.Sysfd` (offsets in
//! `qtap_common::go`), and travels in the record, so no `SSL_set_fd`-like
//! binding is needed.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    programs::ProbeContext,
};
use qtap_common::{go, module, stat, GoKey, TlsPending};

use super::{count, files, now, selected_for, still_selected, tls};
use crate::GO_ACTIVE;

/// A register of the task's saved user registers.
#[inline(always)]
fn reg(ctx: &ProbeContext, read: impl Fn(&pt_regs) -> u64) -> u64 {
    // SAFETY: a uprobe's context is the task's saved user registers; one
    // field is loaded.
    read(unsafe { &*ctx.regs })
}

/// The calling goroutine of process `tgid` (the current one).
#[inline(always)]
fn goroutine(ctx: &ProbeContext, tgid: u32) -> GoKey {
    GoKey {
        tgid,
        _pad: 0,
        goroutine: reg(ctx, |r| r.r14),
    }
}

/// A word of user memory.
#[inline(always)]
fn word(addr: u64) -> Option<u64> {
    // SAFETY: user memory, read through the helper (0 on a fault).
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The socket fd under a `*tls.Conn`, or -1. A `tls.Conn` over a
/// connection type of the program's own has no `netFD` where package
/// net's have it: a number that is not a socket fd is not taken.
#[inline(always)]
fn sysfd(conn: u64) -> i32 {
    let fd = word(conn + go::CONN_DATA)
        .and_then(|data| word(data + go::NETFD))
        .and_then(|netfd| word(netfd + go::SYSFD));
    match fd {
        Some(fd) if fd <= i32::MAX as u64 && files::is_socket(fd as i32) != Some(false) => {
            fd as i32
        }
        _ => -1,
    }
}

/// Entry of `(*Conn).Write(b)`/`(*Conn).Read(b)`: the receiver is in
/// `rax`, `b`'s pointer in `rbx`.
#[inline(always)]
pub fn enter(ctx: &ProbeContext, call: u16) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let sessions = selected_for(tgid, module::GOTLS);
    if sessions == 0 {
        return;
    }
    let conn = reg(ctx, |r| r.rax);
    let pending = TlsPending {
        sessions,
        ssl: conn,
        buf: reg(ctx, |r| r.rbx),
        count_ptr: 0,
        call,
        _pad: 0,
        fd: sysfd(conn),
    };
    // A stack that grows at entry runs the entry again: the same key.
    if GO_ACTIVE
        .insert(&goroutine(ctx, tgid), &pending, 0)
        .is_err()
    {
        count(stat::TLS_FULL);
    }
}

/// A `RET` of the function: `n` is in `rax`, the error's type word in
/// `rbx` (0: no error).
#[inline(always)]
pub fn exit(ctx: &ProbeContext, call: u16) {
    let ts = now();
    let id = bpf_get_current_pid_tgid();
    let key = goroutine(ctx, (id >> 32) as u32);
    // SAFETY: the value is copied out before the entry is removed.
    let Some(pending) = (unsafe { GO_ACTIVE.get(&key) }).copied() else {
        return;
    };
    let _ = GO_ACTIVE.remove(&key);
    if pending.call != call {
        return;
    }
    let sessions = still_selected(key.tgid, pending.sessions);
    if sessions == 0 {
        return;
    }
    let n = (reg(ctx, |r| r.rax) as i64).max(0);
    let failed = reg(ctx, |r| r.rbx) != 0;
    tls::emit_data(id, ts, sessions, &pending, if failed { -1 } else { n }, n);
}
