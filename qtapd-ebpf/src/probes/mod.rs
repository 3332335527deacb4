//! Probe logic, one file per family. Entry points in `main.rs` call in here.

pub mod process;
pub mod syscall;

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use qtap_common::{Header, ABI_VERSION};

use crate::STATS;

/// Adds one to the per-CPU counter `index` (one of `qtap_common::stat`).
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        unsafe { *counter += 1 };
    }
}

/// The header every record starts with, for the current task.
#[inline(always)]
pub fn header(kind: u16, sessions: u64) -> Header {
    let id = bpf_get_current_pid_tgid();
    Header {
        kind,
        abi: ABI_VERSION,
        pid: (id >> 32) as u32,
        tid: id as u32,
        _pad: 0,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        sessions,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}
