//! The openssl module: uprobes on OpenSSL's `SSL_*` functions, attached by
//! qtapd to each `libssl` (and each static OpenSSL executable) that a
//! selected process uses.
//!
//! `SSL_read`/`SSL_write` (and `_ex`) keep their arguments in `TLS_ACTIVE`
//! (keyed by pid_tgid) from entry to return; while the entry exists, the
//! thread's syscalls carry the `SSL*` (see `syscall.rs`), which is how qtapd
//! correlates an `SSL*` with its fd when no `SSL_set_fd` was seen. The
//! entry is removed on every return, errors and `WANT_READ` included, so
//! the correlation never outlives the call. The return emits one
//! `TlsRecord` with the plaintext byte count and first bytes.
//!
//! `SSL_set_fd`/`SSL_set_rfd`/`SSL_set_wfd` and `SSL_free` emit a record
//! at entry: they bind an `SSL*` to its fd, and end that binding.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    programs::{ProbeContext, RetProbeContext},
};
use qtap_common::{direction, kind, limit, module, stat, tls_call, TlsPending, TlsRecord};

use super::{copy_head, count, header, now, selected_for, still_selected, submit, Urgency};
use crate::{TLS_ACTIVE, TLS_BUF};

/// Entry of `SSL_read[_ex]`/`SSL_write[_ex]`: remember the call.
#[inline(always)]
pub fn enter(ctx: &ProbeContext, call: u16) {
    let sessions = selected_for(module::OPENSSL);
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
        _pad: [0; 6],
    };
    if TLS_ACTIVE
        .insert(&bpf_get_current_pid_tgid(), &pending, 0)
        .is_err()
    {
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
    // The functions return `int`: sign-extend the low 32 bits.
    let ret = i64::from(ctx.ret::<u64>() as u32 as i32);
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
    let Some(buf) = TLS_BUF.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, only this program on this CPU uses it.
    let buf = unsafe { &mut *buf };
    buf.record = TlsRecord {
        hdr: header(kind::TLS, sessions, ts),
        ssl: pending.ssl,
        ret,
        bytes,
        call,
        direction: if call == tls_call::SSL_READ || call == tls_call::SSL_READ_EX {
            direction::INGRESS
        } else {
            direction::EGRESS
        },
        _pad: 0,
        fd: -1,
        head_len: 0,
        _pad2: 0,
        head: [0; limit::HEAD_BYTES],
    };
    let plaintext = bytes.max(0) as u64;
    if plaintext > 0 {
        buf.record.head_len = copy_head(pending.buf, plaintext, &mut buf.record.head);
    }
    submit(buf, pending.buf, plaintext, Urgency::Batched);
}

/// Entry of `SSL_set_fd`/`SSL_set_rfd`/`SSL_set_wfd`/`SSL_free`.
#[inline(always)]
pub fn bind(ctx: &ProbeContext, call: u16) {
    let ts = now();
    let sessions = selected_for(module::OPENSSL);
    if sessions == 0 {
        return;
    }
    let Some(buf) = TLS_BUF.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, only this program on this CPU uses it.
    let buf = unsafe { &mut *buf };
    buf.record = TlsRecord {
        hdr: header(kind::TLS, sessions, ts),
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        call,
        direction: direction::NONE,
        fd: if call == tls_call::SSL_FREE {
            -1
        } else {
            ctx.arg::<u64>(1).unwrap_or(u64::MAX) as i32
        },
        ..TlsRecord::default()
    };
    submit(buf, 0, 0, Urgency::Prompt);
}
