//! Who may see a process: restricted sessions (those of callers other
//! than root, `Config::restricted`) select a process only while its
//! credentials are *plain* (`qtap_common::CredOffsets`), the kernel's
//! `ptrace` rule for a caller of the same uid, simplified.
//!
//! Checked at exec (`process.rs`), after every call that changes ids or
//! capabilities (`sys_exit_set*id`, `sys_exit_capset`), and when a process
//! makes itself undumpable (`prctl(PR_SET_DUMPABLE, 0)` at
//! `sys_enter_prctl`). A process that fails is deselected for every
//! restricted session before it returns to user space, and a `CREDS`
//! record tells qtapd. Deselection lasts until the next exec.
//!
//! The credentials are read from `current->real_cred` at offsets qtapd
//! took from the kernel's BTF (`CRED_OFFSETS`); until it set them no
//! process is plain, so restricted sessions fail closed.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel},
    programs::TracePointContext,
};
use qtap_common::{kind, stat, CredOffsets, Header, ProcSel};

use super::{count, header, now, selected_now, tracepoint_field, PROMPT};
use crate::{CONFIG, CRED_OFFSETS, EVENTS, PROCS};

/// `PR_SET_DUMPABLE` and the value that keeps a process dumpable.
const PR_SET_DUMPABLE: u64 = 4;
const SUID_DUMP_USER: u64 = 1;

#[inline(always)]
pub fn offsets() -> CredOffsets {
    // SAFETY: a `static` qtapd may rewrite at load; volatile keeps the
    // compiler from folding the default value.
    unsafe { core::ptr::read_volatile(&raw const CRED_OFFSETS) }
}

#[inline(always)]
fn read_u32(base: u64, off: u32) -> Option<u32> {
    // SAFETY: a kernel pointer read through the fault-tolerant helper.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const u32) }.ok()
}

/// Whether the current task's credentials are plain. Any read that fails
/// counts as not plain.
#[inline(always)]
pub fn plain() -> bool {
    let off = offsets();
    if off.valid != 1 {
        return false;
    }
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: a kernel pointer read through the fault-tolerant helper.
    let Ok(cred) =
        (unsafe { bpf_probe_read_kernel((task + u64::from(off.task_real_cred)) as *const u64) })
    else {
        return false;
    };
    if cred == 0 {
        return false;
    }
    let mut ids = [0u32; 8];
    let mut i = 0;
    while i < 8 {
        match read_u32(cred, off.ids[i]) {
            Some(id) => ids[i] = id,
            None => return false,
        }
        i += 1;
    }
    // SAFETY: a kernel pointer read through the fault-tolerant helper.
    let caps =
        unsafe { bpf_probe_read_kernel((cred + u64::from(off.cap_permitted)) as *const u64) };
    let uids_equal = ids[0] == ids[1] && ids[0] == ids[2] && ids[0] == ids[3];
    let gids_equal = ids[4] == ids[5] && ids[4] == ids[6] && ids[4] == ids[7];
    uids_equal && gids_equal && caps == Ok(0)
}

/// `sys_exit_set*id`, `sys_exit_capset`: the task may have new credentials.
#[inline(always)]
pub fn changed() {
    let ts = now();
    let Some(cfg) = CONFIG.get(0) else { return };
    let id = bpf_get_current_pid_tgid();
    let sessions = selected_now((id >> 32) as u32);
    if sessions & cfg.restricted == 0 || plain() {
        return;
    }
    deselect_restricted(id, sessions, cfg.restricted, ts);
}

/// `sys_enter_prctl(option, arg2, …)`: `PR_SET_DUMPABLE` to anything but
/// "user" makes the process one its owner may not ptrace.
#[inline(always)]
pub fn prctl(ctx: &TracePointContext) {
    let ts = now();
    // SAFETY: the first two arguments of the syscall enter record.
    let (option, value) = unsafe {
        (
            tracepoint_field::<u64>(ctx, 16),
            tracepoint_field::<u64>(ctx, 24),
        )
    };
    if option != PR_SET_DUMPABLE || value == SUID_DUMP_USER {
        return;
    }
    let Some(cfg) = CONFIG.get(0) else { return };
    let id = bpf_get_current_pid_tgid();
    let sessions = selected_now((id >> 32) as u32);
    if sessions & cfg.restricted != 0 {
        deselect_restricted(id, sessions, cfg.restricted, ts);
    }
}

/// Removes the `restricted` sessions from the selection of the current
/// process (`id`, its `bpf_get_current_pid_tgid`) and reports
/// which ones in a `CREDS` record. The entry stays, even with no session
/// left, so calls in flight see the process deselected rather than gone
/// (`super::still_selected`); it goes at the process's exit.
#[inline(always)]
fn deselect_restricted(id: u64, sessions: u64, restricted: u64, ts: u64) {
    let tgid = (id >> 32) as u32;
    let rest = sessions & !restricted;
    if PROCS.insert(&tgid, &ProcSel { sessions: rest }, 0).is_err() {
        // The entry cannot be narrowed: drop it whole rather than leave
        // the restricted bits in place.
        let _ = PROCS.remove(&tgid);
    }
    let record = header(id, kind::CREDS, sessions & restricted, ts);
    if EVENTS.output::<Header>(&record, PROMPT).is_err() {
        count(stat::RING_FULL);
    }
}
