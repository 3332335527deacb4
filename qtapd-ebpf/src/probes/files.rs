//! What kind of file an fd is, read from the current task's fd table
//! through the offsets qtapd took from the kernel's BTF (`FILE_OFFSETS`):
//! `task_struct.files` → `files_struct.fdt` → `fdtable.fd[fd]` →
//! `file.f_inode` → `inode.i_mode`. Read when a call begins, while the fd
//! is the caller's, so that a file or pipe is known as one without qtapd
//! looking at `/proc` later (when the number may name something else).
//! The same walk leads a socket fd to the local address `connect` gave
//! it, which the caller never passes.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use qtap_common::{family, Addr, FileOffsets};

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

/// The current task's fd array (`fdtable.fd`) and its length; `None`
/// when it cannot be told.
#[inline(always)]
pub fn fd_table() -> Option<(u64, u32)> {
    table_of(&offsets())
}

#[inline(always)]
fn table_of(off: &FileOffsets) -> Option<(u64, u32)> {
    if off.valid != 1 {
        return None;
    }
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files = read_ptr(task, off.task_files)?;
    let fdt = read_ptr(files, off.files_fdt)?;
    // SAFETY: a kernel pointer read through the fault-tolerant helper.
    let max =
        unsafe { bpf_probe_read_kernel((fdt + u64::from(off.fdt_max_fds)) as *const u32) }.ok()?;
    Some((read_ptr(fdt, off.fdt_fd)?, max))
}

/// Whether slot `fd` of the fd array `table` is empty (a closed fd).
#[inline(always)]
pub fn is_closed(table: u64, fd: u32) -> bool {
    read_ptr(table + 8 * u64::from(fd), 0).is_none()
}

/// The `struct file` behind `fd` of the current task; `None` when it
/// cannot be told (no offsets, a closed or out-of-range fd, a failed read).
#[inline(always)]
fn file_of(off: &FileOffsets, fd: i32) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    let (table, max) = table_of(off)?;
    if fd as u32 >= max {
        return None;
    }
    read_ptr(table + 8 * fd as u64, 0)
}

/// Whether `fd` of the current task is a socket; `None` when it cannot be
/// told.
#[inline(always)]
pub fn is_socket(fd: i32) -> Option<bool> {
    let off = offsets();
    let file = file_of(&off, fd)?;
    let inode = read_ptr(file, off.file_inode)?;
    // SAFETY: a kernel pointer read through the fault-tolerant helper.
    let mode =
        unsafe { bpf_probe_read_kernel((inode + u64::from(off.inode_mode)) as *const u16) }.ok()?;
    Some(mode & S_IFMT == S_IFSOCK)
}

/// The local address the kernel bound socket `fd` of the current task to,
/// read where the socket keeps it; `None` while it has no port (or cannot
/// be told). Only for an fd known to be an `AF_INET`/`AF_INET6` socket:
/// the caller had `connect` succeed on it with such an address.
#[inline(always)]
pub fn local_addr(fd: i32, fam: u16) -> Option<Addr> {
    let off = offsets();
    let file = file_of(&off, fd)?;
    let socket = read_ptr(file, off.file_private_data)?;
    let sk = read_ptr(socket, off.socket_sk)?;
    // SAFETY (all reads below): kernel pointers read through the
    // fault-tolerant helper.
    let port = unsafe { bpf_probe_read_kernel((sk + u64::from(off.sk_num)) as *const u16) }.ok()?;
    if port == 0 {
        return None;
    }
    let mut addr = Addr {
        family: fam,
        port,
        ..Addr::default()
    };
    if fam == family::INET {
        let ip =
            unsafe { bpf_probe_read_kernel((sk + u64::from(off.sk_rcv_saddr)) as *const [u8; 4]) }
                .ok()?;
        addr.addr[..4].copy_from_slice(&ip);
    } else if off.sk_v6_rcv_saddr != 0 {
        addr.addr = unsafe {
            bpf_probe_read_kernel((sk + u64::from(off.sk_v6_rcv_saddr)) as *const [u8; 16])
        }
        .ok()?;
    } else {
        return None;
    }
    Some(addr)
}
