//! What kind of file an fd is, read from the current task's fd table
//! through the offsets qtapd took from the kernel's BTF (`FILE_OFFSETS`):
//! `task_struct.files` → `files_struct.fdt` → `fdtable.fd[fd]` →
//! `file.f_inode` → `inode.i_mode`. Read when a call begins, while the fd
//! is the caller's, so that a file or pipe is known as one without qtapd
//! looking at `/proc` later (when the number may name something else).

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use qtap_common::FileOffsets;

use crate::FILE_OFFSETS;

/// `S_IFMT` and `S_IFSOCK` of `i_mode`.
const S_IFMT: u16 = 0o170_000;
const S_IFSOCK: u16 = 0o140_000;

#[inline(always)]
fn offsets() -> FileOffsets {
    // SAFETY: a `static` qtapd may rewrite at load; volatile keeps the
    // compiler from folding the default value.
    unsafe { core::ptr::read_volatile(&raw const FILE_OFFSETS) }
}

#[inline(always)]
fn read_ptr(base: u64, off: u32) -> Option<u64> {
    // SAFETY: a kernel pointer read through the fault-tolerant helper.
    let value = unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const u64) }.ok()?;
    (value != 0).then_some(value)
}

/// Whether `fd` of the current task is a socket; `None` when it cannot be
/// told (no offsets, a closed or out-of-range fd, a failed read).
#[inline(always)]
pub fn is_socket(fd: i32) -> Option<bool> {
    let off = offsets();
    if off.valid != 1 || fd < 0 {
        return None;
    }
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files = read_ptr(task, off.task_files)?;
    let fdt = read_ptr(files, off.files_fdt)?;
    // SAFETY: a kernel pointer read through the fault-tolerant helper.
    let max =
        unsafe { bpf_probe_read_kernel((fdt + u64::from(off.fdt_max_fds)) as *const u32) }.ok()?;
    if fd as u32 >= max {
        return None;
    }
    let table = read_ptr(fdt, off.fdt_fd)?;
    let file = read_ptr(table + 8 * fd as u64, 0)?;
    let inode = read_ptr(file, off.file_inode)?;
    // SAFETY: a kernel pointer read through the fault-tolerant helper.
    let mode =
        unsafe { bpf_probe_read_kernel((inode + u64::from(off.inode_mode)) as *const u16) }.ok()?;
    Some(mode & S_IFMT == S_IFSOCK)
}
