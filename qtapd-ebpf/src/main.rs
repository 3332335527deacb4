//! qtap's kernel programs: the maps, one thin entry point per hook, and the
//! panic handler. The logic lives in `probes/`.
//!
//! Every program name is the name of the hook it attaches to: tracepoints
//! (`sys_enter_read` → `syscalls:sys_enter_read`, `sched_process_exec` →
//! `sched:sched_process_exec`) at load, and TLS library uprobes (`SSL_write`,
//! and `SSL_write_ret` for its return) when a session needs them. qtapd
//! attaches by that rule, so this file is the one list of hooks. Go's
//! hooks are the exception (their symbols cannot name a program): see
//! `mod gotls`.
#![no_std]
#![no_main]

mod probes;

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use qtap_common::{
    call, limit, stat, tls_call, Config, Conn, ConnKey, CredOffsets, ExecScratch, FileOffsets,
    GoKey, PatternKey, Pending, ProcSel, SyscallRecord, TaskOffsets, TlsPending, TlsRecord,
    WithPayload,
};

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(limit::RING_BYTES, 0);
#[map]
static PROCS: HashMap<u32, ProcSel> = HashMap::with_max_entries(limit::PROCS, 0);
// Plain hash maps: a full table refuses an insert, counted in STATS, where
// an LRU map would evict what the pipeline still needs without a word.
// Entries of exited threads are removed by the exit probe; connections of
// exited processes by qtapd (at the exit record, and its periodic sweep).
#[map]
static CONNS: HashMap<ConnKey, Conn> = HashMap::with_max_entries(limit::CONNS, 0);
#[map]
static PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(limit::PENDING, 0);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static READER: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static PATTERNS: HashMap<PatternKey, u64> = HashMap::with_max_entries(limit::PATTERNS, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);
#[map]
static SCRATCH: PerCpuArray<ExecScratch> = PerCpuArray::with_max_entries(1, 0);
// Records are assembled here, with their payload, then copied to the ring:
// they do not fit the BPF stack beside the rest.
#[map]
static SYSCALL_BUF: PerCpuArray<WithPayload<SyscallRecord>> = PerCpuArray::with_max_entries(1, 0);
#[map]
static TLS_BUF: PerCpuArray<WithPayload<TlsRecord>> = PerCpuArray::with_max_entries(1, 0);
// A thread killed inside an SSL call never returns from it: the exit probe
// removes its entry.
#[map]
static TLS_ACTIVE: HashMap<u64, TlsPending> = HashMap::with_max_entries(limit::TLS_ACTIVE, 0);
// A process gone inside a Go TLS call leaves its entry: qtapd's sweep
// removes it.
#[map]
static GO_ACTIVE: HashMap<GoKey, TlsPending> = HashMap::with_max_entries(limit::GO_ACTIVE, 0);

/// Offset of `child_pid` in `sched_process_fork`; set by qtapd from tracefs.
#[no_mangle]
static FORK_CHILD_PID_OFF: u32 = 20;
/// Offset of the `filename` `__data_loc` in `sched_process_exec`.
#[no_mangle]
static EXEC_FILENAME_OFF: u32 = 8;
/// Offset of `group_dead` in `sched_process_exit`, 0 when the kernel lacks it.
#[no_mangle]
static EXIT_GROUP_DEAD_OFF: u32 = 0;

/// Where `task_struct` and `cred` keep the credentials; set by qtapd from
/// the kernel's BTF (all zero, `valid: 0`, until then).
#[no_mangle]
static CRED_OFFSETS: CredOffsets = CredOffsets {
    task_real_cred: 0,
    cap_permitted: 0,
    ids: [0; 8],
    valid: 0,
    _pad: 0,
};

/// Where `files_struct`, `fdtable`, `file` and `inode` keep what tells a
/// socket fd from another, and `socket` and `sock_common` its local
/// address; set by qtapd from the kernel's BTF (all zero, `valid: 0`,
/// until then: the kernel does not look).
#[no_mangle]
static FILE_OFFSETS: FileOffsets = FileOffsets {
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    inode_mode: 0,
    file_private_data: 0,
    socket_sk: 0,
    sk_rcv_saddr: 0,
    sk_num: 0,
    sk_v6_rcv_saddr: 0,
    valid: 0,
};

/// Where `task_struct` keeps its thread count, and whether the kernel has
/// BTF; set by qtapd (all zero, `valid: 0`, until then: data calls keep
/// their arguments at enter, and the exit probe takes the leader's exit
/// for the process's when `group_dead` is missing).
#[no_mangle]
static TASK_OFFSETS: TaskOffsets = TaskOffsets {
    task_signal: 0,
    signal_live: 0,
    task_comm: 0,
    valid: 0,
};

/// One enter and one exit program per syscall of the socket module; the
/// data calls' enters are attached only without BTF (see
/// `probes::syscall`).
macro_rules! syscall_probes {
    ($($call:ident => $enter:ident, $exit:ident;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            probes::syscall::enter(&ctx, call::$call);
            0
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            probes::syscall::exit(&ctx, call::$call);
            0
        }
    )*};
}

syscall_probes! {
    SOCKET => sys_enter_socket, sys_exit_socket;
    BIND => sys_enter_bind, sys_exit_bind;
    ACCEPT => sys_enter_accept, sys_exit_accept;
    ACCEPT4 => sys_enter_accept4, sys_exit_accept4;
    CONNECT => sys_enter_connect, sys_exit_connect;
    READ => sys_enter_read, sys_exit_read;
    WRITE => sys_enter_write, sys_exit_write;
    READV => sys_enter_readv, sys_exit_readv;
    WRITEV => sys_enter_writev, sys_exit_writev;
    SENDTO => sys_enter_sendto, sys_exit_sendto;
    RECVFROM => sys_enter_recvfrom, sys_exit_recvfrom;
    SENDMSG => sys_enter_sendmsg, sys_exit_sendmsg;
    RECVMSG => sys_enter_recvmsg, sys_exit_recvmsg;
    SENDMMSG => sys_enter_sendmmsg, sys_exit_sendmmsg;
    RECVMMSG => sys_enter_recvmmsg, sys_exit_recvmmsg;
    SENDFILE => sys_enter_sendfile64, sys_exit_sendfile64;
    CLOSE => sys_enter_close, sys_exit_close;
    DUP => sys_enter_dup, sys_exit_dup;
    DUP2 => sys_enter_dup2, sys_exit_dup2;
    DUP3 => sys_enter_dup3, sys_exit_dup3;
}

/// Entry and return probes of the TLS library calls that move plaintext.
macro_rules! tls_data_probes {
    ($($call:ident => $enter:ident, $exit:ident;)*) => {$(
        #[uprobe]
        pub fn $enter(ctx: ProbeContext) -> u32 {
            probes::tls::enter(&ctx, tls_call::$call);
            0
        }
        #[uretprobe]
        pub fn $exit(ctx: RetProbeContext) -> u32 {
            probes::tls::exit(&ctx, tls_call::$call);
            0
        }
    )*};
}

/// Entry probes of the TLS library calls that bind an `SSL*` (or GnuTLS
/// session) to an fd or free it.
macro_rules! tls_bind_probes {
    ($($call:ident => $enter:ident;)*) => {$(
        #[uprobe]
        pub fn $enter(ctx: ProbeContext) -> u32 {
            probes::tls::bind(&ctx, tls_call::$call);
            0
        }
    )*};
}

/// The OpenSSL hooks, named after the symbols they attach to.
#[allow(non_snake_case)]
mod openssl {
    use super::{probes, tls_call, ProbeContext, RetProbeContext};
    use aya_ebpf::macros::{uprobe, uretprobe};

    tls_data_probes! {
        SSL_READ => SSL_read, SSL_read_ret;
        SSL_READ_EX => SSL_read_ex, SSL_read_ex_ret;
        SSL_WRITE => SSL_write, SSL_write_ret;
        SSL_WRITE_EX => SSL_write_ex, SSL_write_ex_ret;
    }

    tls_bind_probes! {
        SSL_SET_FD => SSL_set_fd;
        SSL_SET_RFD => SSL_set_rfd;
        SSL_SET_WFD => SSL_set_wfd;
        SSL_FREE => SSL_free;
    }
}

/// The GnuTLS hooks, named after the symbols they attach to.
mod gnutls {
    use super::{probes, tls_call, ProbeContext, RetProbeContext};
    use aya_ebpf::macros::{uprobe, uretprobe};

    tls_data_probes! {
        GNUTLS_RECORD_RECV => gnutls_record_recv, gnutls_record_recv_ret;
        GNUTLS_RECORD_SEND => gnutls_record_send, gnutls_record_send_ret;
    }

    tls_bind_probes! {
        GNUTLS_TRANSPORT_SET_INT2 => gnutls_transport_set_int2;
        GNUTLS_TRANSPORT_SET_PTR => gnutls_transport_set_ptr;
        GNUTLS_TRANSPORT_SET_PTR2 => gnutls_transport_set_ptr2;
        GNUTLS_DEINIT => gnutls_deinit;
    }
}

/// Go's `crypto/tls` hooks. A Go symbol (`crypto/tls.(*Conn).Write`)
/// cannot name a program, so these are named for what they probe (qtapd's
/// `ebpf::GO_PROBES` names them): the entry program goes at the
/// function's entry, the `_ret` program (a uprobe, never a uretprobe) at
/// each of its `RET` instructions.
mod gotls {
    use super::{probes, tls_call, ProbeContext};
    use aya_ebpf::macros::uprobe;

    macro_rules! go_probes {
        ($($call:ident => $enter:ident, $exit:ident;)*) => {$(
            #[uprobe]
            pub fn $enter(ctx: ProbeContext) -> u32 {
                probes::gotls::enter(&ctx, tls_call::$call);
                0
            }
            #[uprobe]
            pub fn $exit(ctx: ProbeContext) -> u32 {
                probes::gotls::exit(&ctx, tls_call::$call);
                0
            }
        )*};
    }

    go_probes! {
        GO_WRITE => go_tls_write, go_tls_write_ret;
        GO_READ => go_tls_read, go_tls_read_ret;
    }
}

/// Exit programs of the calls that change a task's ids or capabilities.
macro_rules! creds_probes {
    ($($exit:ident),* $(,)?) => {$(
        #[tracepoint]
        pub fn $exit(_ctx: TracePointContext) -> u32 {
            probes::creds::changed();
            0
        }
    )*};
}

creds_probes! {
    sys_exit_setuid, sys_exit_setreuid, sys_exit_setresuid, sys_exit_setfsuid,
    sys_exit_setgid, sys_exit_setregid, sys_exit_setresgid, sys_exit_setfsgid,
    sys_exit_capset,
}

#[tracepoint]
pub fn sys_enter_prctl(ctx: TracePointContext) -> u32 {
    probes::creds::prctl(&ctx);
    0
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    probes::process::exec(&ctx);
    0
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    probes::process::fork(&ctx);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    probes::process::exit(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
