//! Process lifecycle and in-kernel selection: `sched:sched_process_exec`,
//! `sched:sched_process_fork`, `sched:sched_process_exit`.
//!
//! Selection is decided here, at exec, before the new image runs its first
//! instruction, so a short-lived `curl` is traced from its first socket.
//! The filters arrive compiled (see `qtap_common::Config`): each string
//! value is a `(predicate, length, hash)` key in `PATTERNS` whose value is
//! the mask of sessions that hold it. Matching hashes the exec filename
//! once per kind (whole, each listed prefix and suffix length, a rolling
//! window per `exe.contains` length) and looks each hash up; qtapd checks
//! the strings exactly when the exec record arrives, so a hash collision
//! can only cost a deselect, never a wrong event.
//!
//! A forked child inherits its parent's sessions. `sched_process_fork`
//! fires for threads too and cannot tell them apart, so a thread's tid may
//! get an entry of its own; it is removed when that thread exits.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_loop, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes,
    },
    programs::TracePointContext,
    EbpfContext,
};
use qtap_common::{
    conn_flag, hash_step, kind, limit, pred, stat, Config, ConnKey, ExecRecord, ExecScratch,
    ForkRecord, Header, PatternKey, ProcSel, HASH_MUL,
};

use super::{count, creds, files, header, now, task_offsets, PROMPT};
use crate::{
    CONFIG, CONNS, EVENTS, EXEC_FILENAME_OFF, EXIT_GROUP_DEAD_OFF, FORK_CHILD_PID_OFF, PATTERNS,
    PENDING, PROCS, SCRATCH, TLS_ACTIVE,
};

const EXE_MASK: usize = limit::EXE_LEN - 1;

/// The filename byte at `i`. Steps run with `i` unknown to both LLVM and
/// the verifier; the mask is what proves the access in bounds.
#[inline(always)]
fn byte_at(buf: &[u8; limit::EXE_LEN], i: usize) -> u8 {
    buf[i & EXE_MASK]
}

#[inline(always)]
fn global(value: &u32) -> u32 {
    // SAFETY: a `static` qtapd may rewrite at load; volatile keeps the
    // compiler from folding the default value.
    unsafe { core::ptr::read_volatile(value) }
}

/// `sched_process_exec(filename, pid, old_pid)`: decide which sessions
/// select the new image.
#[inline(always)]
pub fn exec(ctx: &TracePointContext) {
    let ts = now();
    let Some(cfg) = CONFIG.get(0) else { return };
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: the value is copied out at once.
    let before = unsafe { PROCS.get(&tgid) }.map_or(0, |s| s.sessions);
    if (cfg.active == 0 && before == 0) || tgid == cfg.self_tgid {
        return;
    }
    // Raw, not `&mut`: see `select`.
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };

    // SAFETY: offset of the `__data_loc` word inside the tracepoint record.
    let loc = unsafe { ctx.read_at::<u32>(global(&EXEC_FILENAME_OFF) as usize) }.unwrap_or(0);
    let src = (ctx.as_ptr() as usize + (loc & 0xffff) as usize) as *const u8;
    // SAFETY: a kernel string read through the fault-tolerant helper, into
    // the per-CPU scratch of this program on this CPU.
    let len = match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut (*scratch).buf) } {
        Ok(name) => name.len(),
        Err(_) => 0,
    };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let uid = bpf_get_current_uid_gid() as u32;

    if before != 0 {
        forget_closed_conns(tgid);
    }
    let mut sessions = select(cfg, scratch, len & EXE_MASK, &comm, tgid, uid);
    // The new image's credentials are in place: a setuid, setgid or
    // file-capability exec is not for restricted sessions.
    if sessions & cfg.restricted != 0 && !creds::plain() {
        sessions &= !cfg.restricted;
    }
    if sessions == 0 {
        if before == 0 {
            return;
        }
        let _ = PROCS.remove(&tgid);
    } else if PROCS.insert(&tgid, &ProcSel { sessions }, 0).is_err() {
        count(stat::PROCS_FULL);
        return;
    }
    // Sent even when the new image is no longer selected (sessions 0), so
    // qtapd drops what it cached about the old one.
    match EVENTS.reserve::<ExecRecord>(0) {
        Some(mut entry) => {
            let record = entry.as_mut_ptr();
            // SAFETY: `record` points at a reserved, exclusively owned slot.
            unsafe {
                (*record).hdr = header(id, kind::EXEC, sessions, ts);
                (*record).filename_len = (len & EXE_MASK) as u32;
                (*record)._pad = 0;
                (*record).filename = (*scratch).buf;
            }
            entry.submit(PROMPT);
        }
        None => count(stat::RING_FULL),
    }
}

#[inline(always)]
fn lookup(key: u8, len: usize, hash: u64) -> u64 {
    let key = PatternKey {
        key,
        _pad: [0; 3],
        len: len as u32,
        hash,
    };
    // SAFETY: the value is copied out at once.
    unsafe { PATTERNS.get(&key) }.copied().unwrap_or(0)
}

#[inline(always)]
fn has_len(bits: &[u64; 4], len: usize) -> bool {
    bits[(len >> 6) & 3] & (1 << (len & 63)) != 0
}

/// Runs `step(i)` for `i` in `0..n` with `bpf_loop`, so the verifier checks
/// the step once instead of once per iteration (plain loops over the
/// filename exceed its complexity limit).
#[inline(always)]
fn walk(n: u32, step: extern "C" fn(u64, *mut c_void) -> i64) {
    // SAFETY: `step` is a static BPF subprogram with the callback
    // signature `bpf_loop` expects; it takes no context.
    unsafe { bpf_loop(n, step as *mut c_void, core::ptr::null_mut(), 0) };
}

/// The scratch entry and the config, for a `walk` step.
#[inline(always)]
fn step_state() -> Option<(&'static mut ExecScratch, &'static Config)> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    let cfg = CONFIG.get(0)?;
    // SAFETY: per-CPU scratch, used only by the exec program running on
    // this CPU, which is suspended inside `bpf_loop` while steps run.
    Some((unsafe { &mut *scratch }, cfg))
}

/// Forward walk: the hash of each prefix, looked up for each
/// `exe.startsWith` length; ends with the hash of the whole filename.
#[inline(never)]
extern "C" fn prefix_step(i: u64, _ctx: *mut c_void) -> i64 {
    let Some((s, cfg)) = step_state() else {
        return 1;
    };
    let i = i as usize;
    s.hash = hash_step(s.hash, byte_at(&s.buf, i));
    if has_len(&cfg.prefix_lens, i + 1) {
        s.hits[pred::EXE_PREFIX as usize] |= lookup(pred::EXE_PREFIX, i + 1, s.hash);
    }
    0
}

/// Backward walk: the hash of each suffix, looked up for each
/// `exe.endsWith` length.
#[inline(never)]
extern "C" fn suffix_step(j: u64, _ctx: *mut c_void) -> i64 {
    let Some((s, cfg)) = step_state() else {
        return 1;
    };
    let j = j as usize;
    let at = (s.len as usize).wrapping_sub(1 + j);
    s.hash = s
        .hash
        .wrapping_add(u64::from(byte_at(&s.buf, at)).wrapping_mul(s.power));
    s.power = s.power.wrapping_mul(HASH_MUL);
    if has_len(&cfg.suffix_lens, j + 1) {
        s.hits[pred::EXE_SUFFIX as usize] |= lookup(pred::EXE_SUFFIX, j + 1, s.hash);
    }
    0
}

/// Rolling window of `width` bytes, looked up at each position.
#[inline(never)]
extern "C" fn contains_step(i: u64, _ctx: *mut c_void) -> i64 {
    let Some((s, _)) = step_state() else { return 1 };
    let (i, width) = (i as usize, s.width as usize);
    s.hash = hash_step(s.hash, byte_at(&s.buf, i));
    if i >= width {
        let out = u64::from(byte_at(&s.buf, i - width));
        s.hash = s.hash.wrapping_sub(out.wrapping_mul(s.power));
    }
    if i + 1 >= width {
        s.hits[pred::EXE_CONTAINS as usize] |= lookup(pred::EXE_CONTAINS, width, s.hash);
    }
    0
}

/// The sessions whose filters select an image with this filename, comm
/// and pid (see `qtap_common::Config` for the rule).
///
/// `scratch` stays a raw pointer, never a `&mut`: the `walk` steps write
/// it through a look-up of their own while `bpf_loop` runs, and a `&mut`
/// held across a walk tells the compiler nothing else touches it. It then
/// kept fields in registers: the whole-filename hash read after the prefix
/// walk was the 0 stored before it, and `exe:` never matched at exec.
#[inline(always)]
fn select(
    cfg: &Config,
    scratch: *mut ExecScratch,
    len: usize,
    comm: &[u8; 16],
    tgid: u32,
    uid: u32,
) -> u64 {
    // SAFETY: per-CPU scratch, used only by the exec program running on
    // this CPU; every access below goes through the raw pointer.
    unsafe {
        (*scratch).hits = [0; pred::COUNT];
        (*scratch).len = len as u32;
        if cfg.uses[pred::PID as usize] != 0 {
            (*scratch).hits[pred::PID as usize] = lookup(pred::PID, 0, u64::from(tgid));
        }
        if cfg.uses[pred::UID as usize] != 0 {
            (*scratch).hits[pred::UID as usize] = lookup(pred::UID, 0, u64::from(uid));
        }
        if cfg.uses[pred::CGROUP as usize] != 0 {
            let cgroup = bpf_get_current_cgroup_id();
            (*scratch).hits[pred::CGROUP as usize] = lookup(pred::CGROUP, 0, cgroup);
        }
        if cfg.uses[pred::COMM as usize] != 0 {
            let mut hash = 0;
            let mut n = 0;
            while n < comm.len() && comm[n] != 0 {
                hash = hash_step(hash, comm[n]);
                n += 1;
            }
            (*scratch).hits[pred::COMM as usize] = lookup(pred::COMM, n, hash);
        }
        if cfg.uses[pred::EXE as usize] | cfg.uses[pred::EXE_PREFIX as usize] != 0 {
            (*scratch).hash = 0;
            walk(len as u32, prefix_step);
            (*scratch).hits[pred::EXE as usize] = lookup(pred::EXE, len, (*scratch).hash);
        }
        if cfg.uses[pred::EXE_SUFFIX as usize] != 0 {
            (*scratch).hash = 0;
            (*scratch).power = 1;
            walk(len as u32, suffix_step);
        }
        if cfg.uses[pred::EXE_CONTAINS as usize] != 0 {
            for slot in 0..limit::CONTAINS_LENS {
                let width = cfg.contains_lens[slot];
                if width == 0 {
                    break;
                }
                if width as usize <= len {
                    (*scratch).hash = 0;
                    (*scratch).width = width;
                    (*scratch).power = cfg.contains_pows[slot];
                    walk(len as u32, contains_step);
                }
            }
        }
        let mut selected = cfg.active;
        for k in 0..pred::COUNT {
            selected &= (*scratch).hits[k] | !cfg.uses[k];
        }
        selected
    }
}

/// What a [`forget_step`] needs: the process and its fd array.
#[repr(C)]
struct FdWalk {
    table: u64,
    tgid: u32,
    _pad: u32,
}

/// An exec closed the close-on-exec fds without a `close` call, and the
/// new image may open anything on those numbers: the connection entries
/// of the fds it no longer has are dropped (those it kept stay true, but
/// want their first bytes again: `conn_flag::HEAD_SENT`). Without this a
/// file the new image reads on the number of an old socket was shown with
/// that socket's connection.
#[inline(always)]
fn forget_closed_conns(tgid: u32) {
    let Some((table, max)) = files::fd_table() else {
        return;
    };
    let mut walk = FdWalk {
        table,
        tgid,
        _pad: 0,
    };
    let fds = if max > limit::CONNS {
        limit::CONNS
    } else {
        max
    };
    // SAFETY: `forget_step` is a static BPF subprogram with the callback
    // signature `bpf_loop` expects; its context is `walk`, on this stack
    // for as long as the loop runs.
    unsafe {
        bpf_loop(
            fds,
            forget_step as *mut c_void,
            core::ptr::from_mut(&mut walk).cast(),
            0,
        )
    };
}

/// Drops the entry of fd `fd` when its slot in the fd array is empty, and
/// clears a kept one's `HEAD_SENT`.
#[inline(never)]
extern "C" fn forget_step(fd: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the exec program's `FdWalk` (`forget_closed_conns`).
    let walk = unsafe { &*(ctx as *const FdWalk) };
    let fd = fd as u32;
    let key = ConnKey {
        tgid: walk.tgid,
        fd,
    };
    if files::is_closed(walk.table, fd) {
        let _ = CONNS.remove(&key);
    } else if let Some(conn) = CONNS.get_ptr_mut(&key) {
        // qtapd starts the new image's streams afresh: their first bytes
        // are wanted again.
        // SAFETY: a map value, written in place.
        unsafe { (*conn).flags &= !conn_flag::HEAD_SENT };
    }
    0
}

/// `sched_process_fork(parent_comm, parent_pid, child_comm, child_pid)`:
/// the child inherits the parent's sessions.
#[inline(always)]
pub fn fork(ctx: &TracePointContext) {
    let ts = now();
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(sel) = (unsafe { PROCS.get(&((id >> 32) as u32)) }).copied() else {
        return;
    };
    // SAFETY: offset of `child_pid` in the tracepoint record.
    let Ok(child) = (unsafe { ctx.read_at::<u32>(global(&FORK_CHILD_PID_OFF) as usize) }) else {
        return;
    };
    if PROCS.insert(&child, &sel, 0).is_err() {
        count(stat::PROCS_FULL);
        return;
    }
    let record = ForkRecord {
        hdr: header(id, kind::FORK, sel.sessions, ts),
        child_pid: child,
        _pad: 0,
    };
    if EVENTS.output::<ForkRecord>(&record, PROMPT).is_err() {
        count(stat::RING_FULL);
    }
}

/// The current process's live threads (`signal->live`), `None` without
/// the offsets. A leader that exits before its threads (an `exit_group`
/// whose other threads are still returning from their calls) must not
/// end the process's selection: those calls' exits read it.
#[inline(always)]
fn live_threads() -> Option<i32> {
    let off = task_offsets();
    if off.valid == 0 {
        return None;
    }
    // SAFETY: kernel pointers read through the fault-tolerant helper.
    unsafe {
        let task = bpf_get_current_task();
        let signal =
            bpf_probe_read_kernel((task + u64::from(off.task_signal)) as *const u64).ok()?;
        bpf_probe_read_kernel((signal + u64::from(off.signal_live)) as *const i32).ok()
    }
}

/// `sched_process_exit(comm, pid, prio[, group_dead])`: forget the task,
/// and any syscall or TLS call it was inside (killed before returning).
#[inline(always)]
pub fn exit(ctx: &TracePointContext) {
    let ts = now();
    let id = bpf_get_current_pid_tgid();
    let _ = PENDING.remove(&id);
    let _ = TLS_ACTIVE.remove(&id);
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if tid != tgid {
        let _ = PROCS.remove(&tid);
    }
    let group_dead_off = global(&EXIT_GROUP_DEAD_OFF);
    let dead = if group_dead_off != 0 {
        // SAFETY: offset of `group_dead` in the tracepoint record.
        unsafe { ctx.read_at::<u8>(group_dead_off as usize) }.unwrap_or(0) != 0
    } else if let Some(live) = live_threads() {
        // `do_exit` counts the thread out before this tracepoint.
        live == 0
    } else {
        tid == tgid
    };
    if !dead {
        return;
    }
    // SAFETY: the value is copied out at once.
    let Some(sel) = (unsafe { PROCS.get(&tgid) }).copied() else {
        return;
    };
    let _ = PROCS.remove(&tgid);
    let record: Header = header(id, kind::EXIT, sel.sessions, ts);
    if EVENTS.output::<Header>(&record, 0).is_err() {
        count(stat::RING_FULL);
    }
}
