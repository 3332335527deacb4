//! The openssl and gnutls modules: uprobes on OpenSSL's `SSL_*` and
//! GnuTLS's `gnutls_record_*`/`gnutls_transport_set_*` functions,
//! attached by qtapd to each `libssl`/`libgnutls` (and each executable
//! with either linked in) that a selected process uses. The two share
//! this code; below, `SSL*` also means a `gnutls_session_t`.
//!
//! `SSL_read`/`SSL_write` (and `_ex`) keep their arguments in `TLS_ACTIVE`
//! (keyed by pid_tgid) from entry to return; while the entry exists, the
//! thread's syscalls carry the `SSL*` (see `syscall.rs`), which is how qtapd
//! correlates an `SSL*` with its fd when no `SSL_set_fd` was seen. The
//! entry is removed on every return, errors and `WANT_READ` included, so
//! the correlation never outlives the call. The return emits one
//! `TlsRecord` with the plaintext byte count and first bytes.
//!
//! `SSL_set_fd`/`SSL_set_rfd`/`SSL_set_wfd` and `SSL_free` (GnuTLS:
//! `gnutls_transport_set_int2`/`_ptr`/`_ptr2`, `gnutls_deinit`) emit a
//! record at entry: they bind an `SSL*` to its fd, and end that binding.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    programs::{ProbeContext, RetProbeContext},
};
use qtap_common::{direction, kind, module, stat, tls_call, TlsPending, TlsRecord};

use super::{
    clear_from, copy_head, count, header, now, selected_for, still_selected, submit, Urgency,
};
use crate::{TLS_ACTIVE, TLS_BUF};

/// Entry of `SSL_read[_ex]`/`SSL_write[_ex]`: remember the call.
#[inline(always)]
pub fn enter(ctx: &ProbeContext, call: u16) {
    let id = bpf_get_current_pid_tgid();
    let sessions = selected_for((id >> 32) as u32, tls_call::module_of(call));
    if sessions == 0 {
        return;
    }
    let extended = call == tls_call::SSL_READ_EX || call == tls_call::SSL_WRITE_EX;
    let pending = TlsPending {
        sessions,
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        count_ptr: if extended {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        call,
        _pad: 0,
        fd: -1,
    };
    if TLS_ACTIVE.insert(&id, &pending, 0).is_err() {
        count(stat::TLS_FULL);
    }
}

/// Return of `SSL_read[_ex]`/`SSL_write[_ex]`: emit the call's record.
#[inline(always)]
pub fn exit(ctx: &RetProbeContext, call: u16) {
    let ts = now();
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(pending) = (unsafe { TLS_ACTIVE.get(&id) }).copied() else {
        return;
    };
    let _ = TLS_ACTIVE.remove(&id);
    if pending.call != call {
        return;
    }
    // Only the sessions that still select the process (see `syscall.rs`).
    let sessions = still_selected((id >> 32) as u32, pending.sessions);
    if sessions == 0 {
        return;
    }
    // OpenSSL's functions return `int`: sign-extend the low 32 bits;
    // GnuTLS's return `ssize_t`.
    let ret = if tls_call::module_of(call) == module::GNUTLS {
        ctx.ret::<u64>() as i64
    } else {
        i64::from(ctx.ret::<u64>() as u32 as i32)
    };
    let bytes = if pending.count_ptr != 0 {
        if ret == 1 {
            // SAFETY: the caller's `size_t *`, read through the helper.
            unsafe { bpf_probe_read_user(pending.count_ptr as *const u64) }.unwrap_or(0) as i64
        } else {
            0
        }
    } else {
        ret.max(0)
    };
    emit_data(id, ts, sessions, &pending, ret, bytes);
}

/// The record of the current task's (`id`) call of `pending` that moved
/// `bytes` of plaintext (at `pending.buf`), returning `ret`.
#[inline(always)]
pub fn emit_data(id: u64, ts: u64, sessions: u64, pending: &TlsPending, ret: i64, bytes: i64) {
    let Some(buf) = TLS_BUF.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, only this program on this CPU uses it.
    let buf = unsafe { &mut *buf };
    let record = &mut buf.record;
    record.hdr = header(id, kind::TLS, sessions, ts);
    record.ssl = pending.ssl;
    record.ret = ret;
    record.bytes = bytes;
    record.call = pending.call;
    record.direction = if tls_call::is_read(pending.call) {
        direction::INGRESS
    } else {
        direction::EGRESS
    };
    record._pad = 0;
    record.fd = pending.fd;
    // `head_len` and `head`: never carry another call's bytes.
    clear_from::<{ core::mem::offset_of!(TlsRecord, head_len) }, _>(record);
    let plaintext = bytes.max(0) as u64;
    if plaintext > 0 {
        buf.record.head_len = copy_head(pending.buf, plaintext, &mut buf.record.head);
    }
    submit(buf, pending.buf, plaintext, Urgency::Batched);
}

/// An fd argument, or -1 when the value cannot be one
/// (`gnutls_transport_set_ptr` takes a program's own pointer too).
#[inline(always)]
fn fd_arg(ctx: &ProbeContext, n: usize) -> i32 {
    match ctx.arg::<u64>(n) {
        Some(v) if v <= i32::MAX as u64 => v as i32,
        _ => -1,
    }
}

/// Entry of the calls that bind an `SSL*` to its fd (`SSL_set_*fd`,
/// `gnutls_transport_set_*`) or free it (`SSL_free`, `gnutls_deinit`).
#[inline(always)]
pub fn bind(ctx: &ProbeContext, call: u16) {
    let ts = now();
    let id = bpf_get_current_pid_tgid();
    let sessions = selected_for((id >> 32) as u32, tls_call::module_of(call));
    if sessions == 0 {
        return;
    }
    let (fd, send_fd) = match call {
        tls_call::SSL_FREE | tls_call::GNUTLS_DEINIT => (-1, -1),
        tls_call::GNUTLS_TRANSPORT_SET_INT2 | tls_call::GNUTLS_TRANSPORT_SET_PTR2 => {
            (fd_arg(ctx, 1), fd_arg(ctx, 2))
        }
        _ => {
            let fd = fd_arg(ctx, 1);
            (fd, fd)
        }
    };
    // A pointer, not an fd: the calls' nested syscalls bind it instead.
    if !tls_call::is_free(call) && fd < 0 && send_fd < 0 {
        return;
    }
    let Some(buf) = TLS_BUF.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, only this program on this CPU uses it.
    let buf = unsafe { &mut *buf };
    buf.record = TlsRecord {
        hdr: header(id, kind::TLS, sessions, ts),
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        ret: i64::from(send_fd),
        call,
        direction: direction::NONE,
        fd,
        ..TlsRecord::default()
    };
    submit(buf, 0, 0, Urgency::Prompt);
}
