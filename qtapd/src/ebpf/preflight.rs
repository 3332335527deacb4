//! What qtapd needs of the running kernel, checked before anything is
//! loaded: a kernel that lacks something gets one line per missing feature,
//! naming it and what to do — never a verifier dump alone, never a partial
//! attach. Features whose absence only turns something off (BTF, uprobes)
//! let qtapd start; what is off is logged and shown by `status`.
//!
//! Everything is probed, never inferred from the version: the helpers and
//! map types by loading tiny programs (`aya::sys`), the tracepoints from
//! tracefs, lockdown from securityfs. The oldest kernel that has all of it
//! upstream is 5.17 (`bpf_loop`); distribution kernels with backports pass
//! as they are.

use std::path::Path;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
};

use super::btf;
use crate::tracefs::TRACEFS;

/// `CAP_SYS_ADMIN`, `CAP_PERFMON`, `CAP_BPF` bit numbers.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
/// Where the kernel lists its uprobe PMU (`CONFIG_UPROBE_EVENTS`).
const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe";
const LOCKDOWN: &str = "/sys/kernel/security/lockdown";

/// One thing the kernel lacks, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lack {
    pub feature: &'static str,
    pub remedy: &'static str,
}

/// The kernel cannot run qtapd.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("this kernel cannot run qtapd:\n{}", lines(.0))]
pub struct Unsupported(pub Vec<Lack>);

fn lines(lacks: &[Lack]) -> String {
    lacks
        .iter()
        .map(|l| format!("  missing {}: {}", l.feature, l.remedy))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What qtapd found about the running kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts, each probed on its own"
)]
pub struct Facts {
    /// `CapEff` of qtapd itself.
    pub capabilities: u64,
    /// `None`: could not be probed (no privilege to load a program).
    pub ring_buffer: Option<bool>,
    pub tracepoint_programs: Option<bool>,
    pub bpf_loop: Option<bool>,
    /// `syscalls:sys_enter_*` exist (`CONFIG_FTRACE_SYSCALLS`).
    pub syscall_tracepoints: bool,
    /// `sched:sched_process_exec` exists.
    pub sched_tracepoints: bool,
    /// The lockdown mode in force (`none`, `integrity`, `confidentiality`).
    pub lockdown: Option<String>,
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
    pub uprobes: bool,
}

/// Features that are off on this kernel, with why; qtapd runs without them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Reading task credentials in the kernel (BTF): without it, sessions
    /// of users other than root get only processes running at their start.
    pub btf: bool,
    /// Uprobes: `mod:openssl`, `mod:gnutls`, `mod:gotls`.
    pub uprobes: bool,
}

impl Features {
    /// Everything on (tests and the in-memory kernel).
    #[must_use]
    pub fn all() -> Features {
        Features {
            btf: true,
            uprobes: true,
        }
    }

    /// One line per feature that is off.
    #[must_use]
    pub fn off(&self) -> Vec<String> {
        let mut off = Vec::new();
        if !self.btf {
            off.push(format!(
                "no kernel BTF ({}; CONFIG_DEBUG_INFO_BTF): sessions of users other than root \
                 see only processes already running when they start",
                btf::VMLINUX
            ));
        }
        if !self.uprobes {
            off.push(
                "no uprobes (CONFIG_UPROBE_EVENTS): mod:openssl, mod:gnutls and mod:gotls are off"
                    .to_owned(),
            );
        }
        off
    }
}

impl Facts {
    /// Reads and probes the running kernel (tracefs must be mounted).
    #[must_use]
    pub fn of_this_kernel() -> Facts {
        let capabilities = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(0);
        let events = Path::new(TRACEFS).join("events");
        Facts {
            capabilities,
            ring_buffer: is_map_supported(MapType::RingBuf).ok(),
            tracepoint_programs: is_program_supported(ProgramType::TracePoint).ok(),
            bpf_loop: is_helper_supported(ProgramType::TracePoint, BpfHelper::BPF_FUNC_loop).ok(),
            syscall_tracepoints: events.join("syscalls/sys_enter_read").is_dir(),
            sched_tracepoints: events.join("sched/sched_process_exec").is_dir(),
            lockdown: std::fs::read_to_string(LOCKDOWN).ok().and_then(|s| {
                // `none [integrity] confidentiality`: the bracketed one.
                let start = s.find('[')? + 1;
                let end = s[start..].find(']')? + start;
                Some(s[start..end].to_owned())
            }),
            btf: Path::new(btf::VMLINUX).exists(),
            uprobes: Path::new(UPROBE_PMU).exists(),
        }
    }

    /// What the facts mean: the features that are off, or every lack
    /// that stops qtapd.
    ///
    /// # Errors
    /// [`Unsupported`] listing each lack.
    pub fn judge(&self) -> Result<Features, Unsupported> {
        let has = |cap: u32| self.capabilities & (1 << cap) != 0;
        let mut lacks = Vec::new();
        if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
            lacks.push(Lack {
                feature: "privilege",
                remedy: "qtapd needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN): run it as root \
                         or under the systemd unit",
            });
        }
        // Probes that could not run at all are the privilege's lack above.
        if self.tracepoint_programs == Some(false) {
            lacks.push(Lack {
                feature: "tracepoint BPF programs",
                remedy: "the kernel needs CONFIG_BPF_EVENTS",
            });
        }
        if self.ring_buffer == Some(false) {
            lacks.push(Lack {
                feature: "the BPF ring buffer",
                remedy: "it came with Linux 5.8; qtap needs Linux 5.17 or later",
            });
        }
        if self.bpf_loop == Some(false) {
            lacks.push(Lack {
                feature: "the bpf_loop helper",
                remedy: "it came with Linux 5.17 (exe filters are matched with it); \
                         use Linux 5.17 or later",
            });
        }
        if !self.syscall_tracepoints {
            lacks.push(Lack {
                feature: "syscall tracepoints (syscalls:sys_enter_*)",
                remedy:
                    "the kernel needs CONFIG_FTRACE_SYSCALLS, and tracefs at /sys/kernel/tracing",
            });
        }
        if !self.sched_tracepoints {
            lacks.push(Lack {
                feature: "scheduler tracepoints (sched:sched_process_exec)",
                remedy: "the kernel needs CONFIG_TRACING, and tracefs at /sys/kernel/tracing",
            });
        }
        if self.lockdown.as_deref() == Some("confidentiality") {
            lacks.push(Lack {
                feature: "permission to read memory from BPF",
                remedy:
                    "kernel lockdown is `confidentiality`; boot with lockdown=integrity (or none)",
            });
        }
        if lacks.is_empty() {
            Ok(Features {
                btf: self.btf,
                uprobes: self.uprobes,
            })
        } else {
            Err(Unsupported(lacks))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Facts {
        Facts {
            capabilities: 1 << CAP_SYS_ADMIN,
            ring_buffer: Some(true),
            tracepoint_programs: Some(true),
            bpf_loop: Some(true),
            syscall_tracepoints: true,
            sched_tracepoints: true,
            lockdown: Some("integrity".into()),
            btf: true,
            uprobes: true,
        }
    }

    #[test]
    fn a_kernel_with_everything_runs_with_everything() {
        assert_eq!(good().judge(), Ok(Features::all()));
        assert!(Features::all().off().is_empty());
    }

    #[test]
    fn each_lack_is_one_line_naming_the_feature_and_the_remedy() {
        let old = Facts {
            capabilities: 1 << CAP_BPF,
            bpf_loop: Some(false),
            syscall_tracepoints: false,
            lockdown: Some("confidentiality".into()),
            ..good()
        };
        let error = old.judge().unwrap_err();
        let text = error.to_string();
        assert_eq!(error.0.len(), 4, "{text}");
        for needle in [
            "missing privilege: qtapd needs CAP_BPF and CAP_PERFMON",
            "missing the bpf_loop helper: it came with Linux 5.17",
            "missing syscall tracepoints",
            "lockdown is `confidentiality`",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        assert_eq!(
            text.lines().count(),
            5,
            "a heading and one line each: {text}"
        );
    }

    #[test]
    fn missing_btf_or_uprobes_only_turns_something_off() {
        let facts = Facts {
            btf: false,
            uprobes: false,
            ..good()
        };
        let features = facts.judge().unwrap();
        let off = features.off();
        assert_eq!(off.len(), 2);
        assert!(
            off[1].contains("mod:openssl, mod:gnutls and mod:gotls are off"),
            "{off:?}"
        );
    }

    /// The machine the tests run on has what qtapd needs.
    #[test]
    fn this_kernel_passes() {
        let facts = Facts::of_this_kernel();
        if facts.capabilities & (1 << CAP_SYS_ADMIN) == 0 {
            // Without privilege the probes cannot run; the lack is named.
            assert!(facts.judge().unwrap_err().to_string().contains("privilege"));
            return;
        }
        assert_eq!(facts.bpf_loop, Some(true), "{facts:?}");
        assert_eq!(facts.ring_buffer, Some(true), "{facts:?}");
    }
}
