//! Probe logic, one file per family. Entry points in `main.rs` call in here.

pub mod creds;
pub mod files;
pub mod gotls;
pub mod process;
pub mod syscall;
pub mod tls;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_task_btf, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_user_buf, generated::bpf_get_current_comm,
    },
    programs::TracePointContext,
    EbpfContext,
};
use qtap_common::{limit, module, stat, Header, TaskOffsets, WithPayload, ABI_VERSION};

use crate::{CONFIG, EVENTS, PROCS, READER, STATS, TASK_OFFSETS};

/// Adds one to the per-CPU counter `index` (one of `qtap_common::stat`).
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        unsafe { *counter += 1 };
    }
}

/// The time a record is stamped with. Every probe takes it *before* it
/// reads a session mask: qtapd delivers a record only to sessions that
/// started before its stamp, so a mask read before a session's slot was
/// retired can never reach the slot's next owner (see `engine`).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The header every record starts with, for the current task (`id`, its
/// `bpf_get_current_pid_tgid`, which its caller has already asked for),
/// stamped `ts_ns` (from [`now`]).
#[inline(always)]
pub fn header(id: u64, kind: u16, sessions: u64, ts_ns: u64) -> Header {
    Header {
        kind,
        abi: ABI_VERSION,
        pid: (id >> 32) as u32,
        tid: id as u32,
        uid: current_uid(),
        ts_ns,
        sessions,
        comm: current_comm(),
    }
}

/// The current task's real uid, as `/proc/<pid>/status` shows it to
/// qtapd. With BTF, two loads (`task_struct.real_cred`, then `cred.uid`)
/// through the task's BTF-typed pointer, checked and fault-guarded by the
/// verifier: `bpf_get_current_uid_gid` is a helper call that also maps
/// the uid into the task's user namespace, a twentieth of a data call's
/// probe time under nginx. The kernel's own uid is the one qtapd compares
/// with its callers' (theirs, from the socket, are in its namespace).
/// Without BTF, the helper.
#[inline(always)]
fn current_uid() -> u32 {
    let cred = creds::offsets();
    if task_offsets().valid != 0 && cred.valid == 1 {
        // SAFETY: the current task is valid while its program runs; both
        // offsets are constants to the verifier (frozen globals), so the
        // loads are checked against `task_struct`'s and `cred`'s BTF.
        return unsafe {
            let real_cred = *bpf_get_current_task_btf()
                .cast::<u8>()
                .add(cred.task_real_cred as usize)
                .cast::<*const u8>();
            *real_cred.add(cred.ids[0] as usize).cast::<u32>()
        };
    }
    bpf_get_current_uid_gid() as u32
}

/// The current task's name. With BTF, two loads from `task_struct.comm`
/// through the task's BTF-typed pointer (checked and fault-guarded by the
/// verifier): no helper call, which is what most of the helper's cost is.
/// Without BTF, `bpf_get_current_comm`, which writes all 16 bytes (padded
/// with zeros, or zeros when it fails), so the buffer is not zeroed
/// first: in BPF a `memset` is a loop over bytes.
#[inline(always)]
fn current_comm() -> [u8; 16] {
    let offsets = task_offsets();
    // A word load wants a word-aligned place (`comm` follows pointers in
    // every kernel's layout, but a randomized layout could move it).
    if offsets.valid != 0 && offsets.task_comm % 8 == 0 {
        // SAFETY: the current task is valid while its program runs;
        // `task_comm` is a constant to the verifier (a frozen global), so
        // the loads are checked against `task_struct`'s BTF.
        let words = unsafe {
            let comm = bpf_get_current_task_btf()
                .cast::<u8>()
                .add(offsets.task_comm as usize)
                .cast::<[u64; 2]>();
            [(*comm)[0], (*comm)[1]]
        };
        // SAFETY: two words are sixteen bytes.
        return unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(words) };
    }
    let mut comm = core::mem::MaybeUninit::<[u8; 16]>::uninit();
    // SAFETY: the helper fills the 16 bytes whatever it returns.
    unsafe {
        bpf_get_current_comm(comm.as_mut_ptr().cast(), 16);
        comm.assume_init()
    }
}

/// The `T` at byte `offset` of a tracepoint's record, loaded from the
/// context directly: the verifier lets a tracepoint program read its
/// record at any offset past the common header that is a multiple of the
/// load's size. `ctx.read_at` goes through `bpf_probe_read_kernel`, a
/// helper call and a checked copy: a twentieth of a data call's probe
/// time under nginx.
///
/// # Safety
/// `offset` must be a constant (the verifier refuses a context pointer
/// moved by a register), at least 8, a multiple of `size_of::<T>()`, and
/// inside the tracepoint's record.
#[inline(always)]
pub unsafe fn tracepoint_field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the caller's contract; volatile keeps the load one load of
    // `T`'s size, which is what the verifier checks.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// The sessions that select process `tgid` now (any module).
#[inline(always)]
pub fn selected_now(tgid: u32) -> u64 {
    // SAFETY: the value is copied out at once.
    unsafe { PROCS.get(&tgid) }.map_or(0, |sel| sel.sessions)
}

/// Of `sessions` (taken when a call began), those that still select
/// process `tgid` as it returns. A process deselected meanwhile keeps an
/// entry with fewer sessions (or none, see `creds.rs`); a process with no
/// entry has exited (on kernels without `group_dead`, when its leader
/// did, while other threads finish their calls), and its last calls are
/// still its sessions'. A retired slot's bit was cleared from the call's
/// entry by qtapd.
#[inline(always)]
pub fn still_selected(tgid: u32, sessions: u64) -> u64 {
    // SAFETY: the value is copied out at once.
    unsafe { PROCS.get(&tgid) }.map_or(sessions, |sel| sessions & sel.sessions)
}

/// This kernel's [`TaskOffsets`] (`valid`: it has BTF), read by the exit
/// probe and by the data calls' exits.
#[inline(always)]
pub fn task_offsets() -> TaskOffsets {
    // SAFETY: a `static` qtapd may rewrite at load; volatile keeps the
    // compiler from folding the default value.
    unsafe { core::ptr::read_volatile(&raw const TASK_OFFSETS) }
}

/// Sessions that asked for the kernel record family `module` (one of
/// `qtap_common::module`).
#[inline(always)]
pub fn module_sessions(module: usize) -> u64 {
    CONFIG
        .get(0)
        .and_then(|c| c.modules.get(module).copied())
        .unwrap_or(0)
}

/// Sessions that asked for the records of a C TLS library (OpenSSL,
/// GnuTLS): the ones whose calls fill `TLS_ACTIVE`. One read of the config.
#[inline(always)]
pub fn library_tls_sessions() -> u64 {
    CONFIG.get(0).map_or(0, |c| {
        c.modules.get(module::OPENSSL).copied().unwrap_or(0)
            | c.modules.get(module::GNUTLS).copied().unwrap_or(0)
    })
}

/// The sessions of `module` that select process `tgid` (0: none).
#[inline(always)]
pub fn selected_for(tgid: u32, module: usize) -> u64 {
    selected_now(tgid) & module_sessions(module)
}

/// Zeroes the bytes of `value` from offset `FROM` to its end, a word at a
/// time. Zeroed field by field or as a whole, a record's tail becomes a
/// `memset` the compiler cannot prove 8-aligned, which in BPF is a loop
/// over bytes.
#[inline(always)]
pub fn clear_from<const FROM: usize, T>(value: &mut T) {
    use core::mem::{align_of, size_of};
    const {
        assert!(align_of::<T>() >= 8 && FROM % 8 == 0 && size_of::<T>() % 8 == 0);
        assert!(FROM <= size_of::<T>());
    };
    let words = core::ptr::from_mut(value)
        .cast::<u8>()
        .wrapping_add(FROM)
        .cast::<u64>();
    let mut i = 0;
    while i < (size_of::<T>() - FROM) / 8 {
        // SAFETY: inside `value`, at a multiple of 8 from its 8-aligned
        // start; volatile, so the stores are not merged back into a
        // `memset`.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
}

/// Copies up to `len` (at most `HEAD_BYTES`) bytes of user memory at `src`
/// into `head`; returns how many were copied (0 when unreadable).
#[inline(always)]
pub fn copy_head(src: u64, len: u64, head: &mut [u8; limit::HEAD_BYTES]) -> u32 {
    if src == 0 {
        return 0;
    }
    let n = if len > limit::HEAD_BYTES as u64 {
        limit::HEAD_BYTES
    } else {
        len as usize
    };
    let Some(dst) = head.get_mut(..n) else {
        return 0;
    };
    // SAFETY: a user pointer read through the fault-tolerant helper.
    match unsafe { bpf_probe_read_user_buf(src as *const u8, dst) } {
        Ok(()) => n as u32,
        Err(_) => 0,
    }
}

/// How soon qtapd must read a record.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// Collected on qtapd's clock (or past `WAKE_BYTES`).
    Batched,
    /// Wakes qtapd at once ([`PROMPT`]): it must look at `/proc` for this
    /// record while what it describes is still there (an fd the kernel
    /// has no connection for: qtapd resolves it by number, and a late look
    /// could find the number reused).
    Prompt,
}

/// The ring flags of a record qtapd must act on while the process is
/// still there (a `/proc` look-up, a restricted session's credential
/// check): a forced wakeup. The default wakes the reader only when it has
/// read everything before the record, and batched data records (sent
/// without a wakeup) usually wait unread, so such a record would wait for
/// qtapd's drain clock, by which time a short-lived process has exited.
pub const PROMPT: u64 = BPF_RB_FORCE_WAKEUP as u64;

/// The bytes of a data call's payload to capture (`--capture-bytes`, a
/// session's `capture_bytes`; 0: none).
#[inline(always)]
pub fn capture_bytes() -> u64 {
    u64::from(CONFIG.get(0).map_or(0, |c| c.capture_bytes))
}

/// Sends `buf.record` to the ring, followed by up to the configured capture
/// of the `len` bytes at user address `src` (a data call's payload);
/// false when the ring was full.
#[inline(always)]
pub fn submit<T>(buf: &mut WithPayload<T>, src: u64, len: u64, urgency: Urgency) -> bool {
    let capture = capture_bytes();
    let mut n = if len < capture { len } else { capture };
    if n > limit::CAPTURE_MAX as u64 {
        n = limit::CAPTURE_MAX as u64;
    }
    if n > 0 && src != 0 {
        let copied = match buf.payload.get_mut(..n as usize) {
            // SAFETY: a user pointer read through the fault-tolerant helper.
            Some(dst) => unsafe { bpf_probe_read_user_buf(src as *const u8, dst) }.is_ok(),
            None => false,
        };
        if !copied {
            n = 0;
        }
    } else {
        n = 0;
    }
    let size = core::mem::size_of::<T>() + n as usize;
    // SAFETY: `size` is at most the size of `*buf` (`n <= CAPTURE_MAX`),
    // and the record comes first (`repr(C)`).
    let bytes = unsafe { core::slice::from_raw_parts(core::ptr::from_ref(buf).cast::<u8>(), size) };
    let flags = match urgency {
        Urgency::Batched => data_wakeup(),
        Urgency::Prompt => PROMPT,
    };
    if EVENTS.output::<[u8]>(bytes, flags).is_err() {
        count(stat::RING_FULL);
        return false;
    }
    if flags == u64::from(BPF_RB_NO_WAKEUP) {
        wake_if_idle();
    }
    true
}

/// Wakes qtapd when it has stopped its drain clock (`READER` set: it found
/// the ring empty while its sessions' programs were quiet), so a record
/// sent without a wakeup does not wait for the next one that has one.
///
/// It runs after the record is committed, and the commit is a full
/// barrier (`xchg` on the record's header); qtapd sets `READER` before it
/// looks at the ring a last time. So either this load sees the flag, or
/// qtapd's look sees the record: a record is never left unread with no
/// wakeup coming. The wakeup is an empty record, reserved and discarded:
/// the reader skips it, and it counts as nothing.
#[inline(always)]
fn wake_if_idle() {
    let Some(idle) = READER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the map's one value, shared by every CPU and qtapd; a stale
    // read or two CPUs clearing it at once cost at most one more wakeup.
    unsafe {
        if core::ptr::read_volatile(idle) == 0 {
            return;
        }
        core::ptr::write_volatile(idle, 0);
    }
    if let Some(entry) = EVENTS.reserve::<u64>(0) {
        entry.discard(PROMPT);
    }
}

/// The ring flags of a data record: no wakeup while the unread bytes are
/// below `WAKE_BYTES` (qtapd drains the ring on a short clock), a wakeup
/// past it so a burst is read before it fills the ring. Exec, fork and
/// credential records, which qtapd must act on at once, are [`PROMPT`].
///
/// Every record past the mark wakes, not only the one that crosses it.
/// Each such wakeup is an `irq_work` (a self-interrupt, a VM exit here),
/// and that cost, paid by the traced call, brakes a program that outruns
/// qtapd: with waking at the crossing only, a flat-out loadgen with 16
/// followers lost 40 % of its records to a full ring, against none
/// (bench/history.md, 2026-12-04).
#[inline(always)]
fn data_wakeup() -> u64 {
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= limit::WAKE_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}
