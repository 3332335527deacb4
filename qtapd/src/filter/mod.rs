//! Filter strings (DESIGN.md §4): parsing with precise errors, display in
//! canonical form, and exact evaluation in user space. `compile` turns a
//! set of session filters into the kernel's tables.
//!
//! Grammar: `term[,term…]`, each `key:value`, the value being everything
//! after the first `:`. Terms with the same key are alternatives (any may
//! match); terms with different keys must all match. `mod:` terms add up;
//! none means `mod:socket`. `fd:socket` keeps the calls on socket fds
//! only (decided in the kernel, see `qtap_common::FileOffsets`); no `fd:`
//! term, or `fd:any`, keeps calls on files and pipes too (`conn_info`
//! null), as Qtap's `--bpf-trace` shows them. `cgroup:`, `container:`
//! and `unit:` select by the process's cgroup: `compile` turns them into
//! the ids of the host's cgroups they match (see `crate::cgroup`).

pub mod compile;

use std::fmt;

use qtap_common::limit;

use crate::cgroup::Cgroup;

/// Every key the grammar knows, in the order error messages list them.
pub const KEYS: &[&str] = &[
    "mod",
    "exe",
    "exe.contains",
    "exe.startsWith",
    "exe.endsWith",
    "comm",
    "pid",
    "uid",
    "port",
    "fd",
    "cgroup",
    "container",
    "unit",
];

/// `fd:` values: which fds' calls a session keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FdKind {
    /// Sockets only.
    Socket,
    /// Every fd: sockets, files, pipes.
    Any,
}

impl FdKind {
    pub const ALL: [FdKind; 2] = [FdKind::Socket, FdKind::Any];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            FdKind::Socket => "socket",
            FdKind::Any => "any",
        }
    }
}

/// Keys that select by the process's cgroup (see [`crate::cgroup`]);
/// decided in the kernel by cgroup id at exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CgroupKey {
    /// The cgroup's path starts with the value (`/system.slice/`).
    Path,
    /// The container id starts with the value.
    Container,
    /// The systemd unit is the value (`nginx.service`).
    Unit,
}

impl CgroupKey {
    pub const ALL: [CgroupKey; 3] = [CgroupKey::Path, CgroupKey::Container, CgroupKey::Unit];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            CgroupKey::Path => "cgroup",
            CgroupKey::Container => "container",
            CgroupKey::Unit => "unit",
        }
    }

    fn matches(self, value: &str, cgroup: &Cgroup) -> bool {
        match self {
            CgroupKey::Path => cgroup.path.starts_with(value),
            CgroupKey::Container => cgroup
                .container_id
                .as_deref()
                .is_some_and(|id| id.starts_with(value)),
            CgroupKey::Unit => cgroup.unit.as_deref() == Some(value),
        }
    }
}

/// Longest `comm` the kernel keeps (`TASK_COMM_LEN` - 1).
const COMM_MAX: usize = 15;

/// An event family a filter can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Module {
    /// Network syscalls.
    Socket,
    /// exec, fork and exit of selected processes.
    Process,
    /// OpenSSL library calls (plaintext side of TLS).
    Openssl,
    /// GnuTLS library calls (plaintext side of TLS).
    Gnutls,
    /// Go crypto/tls calls (plaintext side of TLS).
    Gotls,
    /// Protocol detections, once per fd (and once inside TLS).
    Protocol,
    /// What was done with each data event's bytes, and why.
    Data,
}

impl Module {
    /// Every module, in the order help and errors list them.
    pub const ALL: [Module; 7] = [
        Module::Socket,
        Module::Process,
        Module::Openssl,
        Module::Gnutls,
        Module::Gotls,
        Module::Protocol,
        Module::Data,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Module::Socket => "socket",
            Module::Process => "process",
            Module::Openssl => "openssl",
            Module::Gnutls => "gnutls",
            Module::Gotls => "gotls",
            Module::Protocol => "protocol",
            Module::Data => "data",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The kernel record families (`qtap_common::module`) this module is
    /// made from: protocol detection and data decisions need both the
    /// syscalls and the TLS library calls.
    #[must_use]
    pub fn kernel_families(self) -> &'static [usize] {
        use qtap_common::module::{GNUTLS, GOTLS, OPENSSL, SOCKET};
        match self {
            Module::Socket => &[SOCKET],
            Module::Process => &[],
            Module::Openssl => &[OPENSSL],
            Module::Gnutls => &[GNUTLS],
            Module::Gotls => &[GOTLS],
            Module::Protocol | Module::Data => &[SOCKET, OPENSSL, GNUTLS, GOTLS],
        }
    }

    /// The module of a TLS library call (`qtap_common::tls_call`).
    #[must_use]
    pub fn of_tls_call(call: u16) -> Module {
        match qtap_common::tls_call::module_of(call) {
            qtap_common::module::GNUTLS => Module::Gnutls,
            qtap_common::module::GOTLS => Module::Gotls,
            _ => Module::Openssl,
        }
    }

    /// Whether the module's records come from uprobes on a TLS library.
    #[must_use]
    pub fn is_tls_library(self) -> bool {
        matches!(self, Module::Openssl | Module::Gnutls | Module::Gotls)
    }
}

/// `socket, process, …` for messages.
fn module_names() -> String {
    Module::ALL.map(Module::name).join(", ")
}

/// A process predicate key; the value is matched against the exec path,
/// the task name or the pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StrKey {
    Exe,
    ExeContains,
    ExeStartsWith,
    ExeEndsWith,
    Comm,
}

impl StrKey {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            StrKey::Exe => "exe",
            StrKey::ExeContains => "exe.contains",
            StrKey::ExeStartsWith => "exe.startsWith",
            StrKey::ExeEndsWith => "exe.endsWith",
            StrKey::Comm => "comm",
        }
    }

    fn matches(self, value: &[u8], exe: &[u8], comm: &[u8]) -> bool {
        match self {
            StrKey::Exe => exe == value,
            StrKey::ExeContains => exe.windows(value.len()).any(|w| w == value),
            StrKey::ExeStartsWith => exe.starts_with(value),
            StrKey::ExeEndsWith => exe.ends_with(value),
            StrKey::Comm => comm == value,
        }
    }
}

/// One parsed term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Term {
    Mod(Module),
    Str(StrKey, String),
    Pid(u32),
    Uid(u32),
    Port(u16),
    Fd(FdKind),
    Cgroup(CgroupKey, String),
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Mod(m) => write!(f, "mod:{}", m.name()),
            Term::Str(k, v) => write!(f, "{}:{v}", k.name()),
            Term::Pid(p) => write!(f, "pid:{p}"),
            Term::Uid(u) => write!(f, "uid:{u}"),
            Term::Port(p) => write!(f, "port:{p}"),
            Term::Fd(k) => write!(f, "fd:{}", k.name()),
            Term::Cgroup(k, v) => write!(f, "{}:{v}", k.name()),
        }
    }
}

/// A parsed, valid filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    terms: Vec<Term>,
    /// `Module::bit`s asked for, computed once (asked per event).
    modules: u8,
    /// `fd:` terms, none of them `fd:any` (asked per event).
    sockets_only: bool,
}

/// Why a filter string was rejected. `position` counts terms from 1.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error(
        "the filter is empty; give at least one term such as `mod:socket` or `exe.contains:curl`"
    )]
    Empty,
    #[error("term {position} `{term}` is empty (two commas in a row, or a trailing comma?)")]
    EmptyTerm { position: usize, term: String },
    #[error("term {position} `{term}` has no `:`; terms are `key:value`, valid keys: {}", KEYS.join(", "))]
    NoColon { position: usize, term: String },
    #[error("term {position} `{term}`: unknown key `{key}`; valid keys: {}", KEYS.join(", "))]
    UnknownKey {
        position: usize,
        term: String,
        key: String,
    },
    #[error(
        "term {position} `{term}`: unknown module `{value}`; valid modules: {}",
        module_names()
    )]
    UnknownModule {
        position: usize,
        term: String,
        value: String,
    },
    #[error("term {position} `{term}`: unknown fd kind `{value}`; valid kinds: socket, any")]
    UnknownFdKind {
        position: usize,
        term: String,
        value: String,
    },
    #[error("term {position} `{term}`: the value is empty")]
    EmptyValue { position: usize, term: String },
    #[error("term {position} `{term}`: `{value}` is not a valid {what}")]
    BadNumber {
        position: usize,
        term: String,
        value: String,
        what: &'static str,
    },
    #[error("term {position} `{term}`: the value is {len} bytes, the limit is {max}")]
    TooLong {
        position: usize,
        term: String,
        len: usize,
        max: usize,
    },
    #[error("term {position} `{term}`: {why}")]
    BadCgroup {
        position: usize,
        term: String,
        why: &'static str,
    },
    #[error("term {position} `{term}`: control characters are not allowed in a filter")]
    Control { position: usize, term: String },
}

impl Filter {
    fn from_terms(terms: Vec<Term>) -> Filter {
        let named = terms.iter().fold(0, |bits, t| match t {
            Term::Mod(m) => bits | m.bit(),
            _ => bits,
        });
        let modules = if named == 0 {
            Module::Socket.bit()
        } else {
            named
        };
        let mut kinds = terms.iter().filter_map(|t| match t {
            Term::Fd(k) => Some(*k),
            _ => None,
        });
        let sockets_only = kinds
            .next()
            .is_some_and(|first| first == FdKind::Socket && kinds.all(|k| k == FdKind::Socket));
        Filter {
            terms,
            modules,
            sockets_only,
        }
    }

    /// Parses a filter string; see the module doc for the grammar.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.trim().is_empty() {
            return Err(FilterError::Empty);
        }
        let terms = text
            .split(',')
            .enumerate()
            .map(|(i, raw)| parse_term(i + 1, raw))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Filter::from_terms(terms))
    }

    /// The modules asked for (`socket` when none is named).
    #[must_use]
    pub fn modules(&self) -> Vec<Module> {
        Module::ALL
            .into_iter()
            .filter(|m| self.modules & m.bit() != 0)
            .collect()
    }

    #[must_use]
    pub fn wants(&self, module: Module) -> bool {
        self.modules & module.bit() != 0
    }

    /// Values of one string key.
    pub fn strings(&self, key: StrKey) -> impl Iterator<Item = &str> {
        self.terms.iter().filter_map(move |t| match t {
            Term::Str(k, v) if *k == key => Some(v.as_str()),
            _ => None,
        })
    }

    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.terms
            .iter()
            .filter_map(|t| if let Term::Pid(p) = t { Some(*p) } else { None })
    }

    pub fn uids(&self) -> impl Iterator<Item = u32> + '_ {
        self.terms
            .iter()
            .filter_map(|t| if let Term::Uid(u) = t { Some(*u) } else { None })
    }

    /// Number of terms.
    #[must_use]
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// Never true: a parsed filter has a term.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The same filter restricted to processes of `uid` (added as a term,
    /// which must match along with every other key).
    #[must_use]
    pub fn restricted_to_uid(&self, uid: u32) -> Filter {
        let mut terms: Vec<Term> = self
            .terms
            .iter()
            .filter(|t| !matches!(t, Term::Uid(_)))
            .cloned()
            .collect();
        terms.push(Term::Uid(uid));
        Filter::from_terms(terms)
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.terms.iter().filter_map(|t| {
            if let Term::Port(p) = t {
                Some(*p)
            } else {
                None
            }
        })
    }

    /// Whether no term restricts processes: every process is selected.
    #[must_use]
    pub fn selects_all(&self) -> bool {
        !self.terms.iter().any(|t| {
            matches!(
                t,
                Term::Str(..) | Term::Pid(_) | Term::Uid(_) | Term::Cgroup(..)
            )
        })
    }

    /// Whether the filter selects by cgroup (`cgroup`, `container`, `unit`).
    #[must_use]
    pub fn has_cgroup_terms(&self) -> bool {
        self.terms.iter().any(|t| matches!(t, Term::Cgroup(..)))
    }

    /// Exact evaluation of the cgroup predicates: for each such key the
    /// filter uses, some value matches. A process without a cgroup (gone)
    /// passes only a filter without them.
    #[must_use]
    pub fn matches_cgroup(&self, cgroup: Option<&Cgroup>) -> bool {
        CgroupKey::ALL.iter().all(|&key| {
            let mut values = self
                .terms
                .iter()
                .filter_map(|t| match t {
                    Term::Cgroup(k, v) if *k == key => Some(v.as_str()),
                    _ => None,
                })
                .peekable();
            values.peek().is_none() || cgroup.is_some_and(|c| values.any(|v| key.matches(v, c)))
        })
    }

    /// Exact evaluation of the process predicates.
    #[must_use]
    pub fn matches_process(&self, exe: &[u8], comm: &[u8], pid: u32, uid: u32) -> bool {
        let str_keys = [
            StrKey::Exe,
            StrKey::ExeContains,
            StrKey::ExeStartsWith,
            StrKey::ExeEndsWith,
            StrKey::Comm,
        ];
        let strings_ok = str_keys.iter().all(|&key| {
            let mut values = self.strings(key).peekable();
            values.peek().is_none() || values.any(|v| key.matches(v.as_bytes(), exe, comm))
        });
        let mut pids = self.pids().peekable();
        let mut uids = self.uids().peekable();
        strings_ok
            && (pids.peek().is_none() || pids.any(|p| p == pid))
            && (uids.peek().is_none() || uids.any(|u| u == uid))
    }

    /// Whether the session keeps calls on socket fds only: `fd:` terms,
    /// none of them `fd:any`.
    #[must_use]
    pub fn sockets_only(&self) -> bool {
        self.sockets_only
    }

    /// Whether the filter has `port` terms (the hot path skips address
    /// parsing without them).
    #[must_use]
    pub fn has_ports(&self) -> bool {
        self.ports().next().is_some()
    }

    /// Exact evaluation of the connection predicates; `None` ports (not a
    /// network socket, or unknown) pass only when no `port` term is given.
    #[must_use]
    pub fn matches_ports(&self, local: Option<u16>, remote: Option<u16>) -> bool {
        let mut ports = self.ports().peekable();
        ports.peek().is_none() || ports.any(|p| Some(p) == local || Some(p) == remote)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, term) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{term}")?;
        }
        Ok(())
    }
}

/// A `cgroup:`, `container:` or `unit:` term.
fn cgroup_term(position: usize, term: String, key: &str, value: &str) -> Result<Term, FilterError> {
    const MAX: usize = limit::PATTERN_LEN * 4;
    let (key, bad) = match key {
        "cgroup" => (
            CgroupKey::Path,
            (!value.starts_with('/')).then_some(
                "a cgroup path starts with `/`, as in /proc/<pid>/cgroup (e.g. `cgroup:/system.slice/`)",
            ),
        ),
        "container" => (
            CgroupKey::Container,
            (!value.bytes().all(|b| b.is_ascii_hexdigit()))
                .then_some("a container id is hexadecimal (a prefix of the 64-digit id)"),
        ),
        _ => (CgroupKey::Unit, None),
    };
    if let Some(why) = bad {
        return Err(FilterError::BadCgroup {
            position,
            term,
            why,
        });
    }
    if value.len() > MAX {
        return Err(FilterError::TooLong {
            position,
            term,
            len: value.len(),
            max: MAX,
        });
    }
    Ok(Term::Cgroup(key, value.to_owned()))
}

fn parse_term(position: usize, raw: &str) -> Result<Term, FilterError> {
    let term = raw.to_owned();
    if raw.chars().any(char::is_control) {
        return Err(FilterError::Control { position, term });
    }
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(FilterError::EmptyTerm { position, term });
    }
    let Some((key, value)) = trimmed.split_once(':') else {
        return Err(FilterError::NoColon { position, term });
    };
    let key = key.trim();
    if !KEYS.contains(&key) {
        return Err(FilterError::UnknownKey {
            position,
            term,
            key: key.to_owned(),
        });
    }
    if value.is_empty() {
        return Err(FilterError::EmptyValue { position, term });
    }
    let number = |what: &'static str| FilterError::BadNumber {
        position,
        term: term.clone(),
        value: value.to_owned(),
        what,
    };
    let string = |key: StrKey, max: usize| {
        if value.len() > max {
            Err(FilterError::TooLong {
                position,
                term: term.clone(),
                len: value.len(),
                max,
            })
        } else {
            Ok(Term::Str(key, value.to_owned()))
        }
    };
    match key {
        "mod" => match Module::ALL.into_iter().find(|m| m.name() == value) {
            Some(m) => Ok(Term::Mod(m)),
            None => Err(FilterError::UnknownModule {
                position,
                term,
                value: value.to_owned(),
            }),
        },
        "exe" => string(StrKey::Exe, limit::EXE_LEN - 1),
        "exe.contains" => string(StrKey::ExeContains, limit::PATTERN_LEN),
        "exe.startsWith" => string(StrKey::ExeStartsWith, limit::PATTERN_LEN),
        "exe.endsWith" => string(StrKey::ExeEndsWith, limit::PATTERN_LEN),
        "comm" => string(StrKey::Comm, COMM_MAX),
        "pid" => match value.parse::<u32>() {
            Ok(pid) if pid > 0 => Ok(Term::Pid(pid)),
            _ => Err(number("pid (1 to 4294967295)")),
        },
        "uid" => match value.parse::<u32>() {
            Ok(uid) => Ok(Term::Uid(uid)),
            _ => Err(number("uid (0 to 4294967295)")),
        },
        "port" => match value.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Term::Port(port)),
            _ => Err(number("port (1 to 65535)")),
        },
        "cgroup" | "container" | "unit" => cgroup_term(position, term, key, value),
        "fd" => match FdKind::ALL.into_iter().find(|k| k.name() == value) {
            Some(k) => Ok(Term::Fd(k)),
            None => Err(FilterError::UnknownFdKind {
                position,
                term,
                value: value.to_owned(),
            }),
        },
        _ => unreachable!("every key of KEYS is handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_terms_parse_and_reject_what_cannot_match() {
        let f = Filter::parse("unit:nginx.service,container:AB12,cgroup:/system.slice/").unwrap();
        assert!(f.has_cgroup_terms() && !f.selects_all());
        assert_eq!(
            f.to_string(),
            "unit:nginx.service,container:AB12,cgroup:/system.slice/"
        );
        let nginx = Cgroup::new(1, "/system.slice/nginx.service");
        assert!(!f.matches_cgroup(Some(&nginx)), "no container id");
        let only_unit = Filter::parse("unit:nginx.service,unit:cron.service").unwrap();
        assert!(only_unit.matches_cgroup(Some(&nginx)));
        assert!(!only_unit.matches_cgroup(None));
        assert!(Filter::parse("pid:1").unwrap().matches_cgroup(None));
        for (bad, says) in [
            ("cgroup:system.slice", "starts with `/`"),
            ("container:xyz", "hexadecimal"),
        ] {
            let e = Filter::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_modules_and_predicates() {
        let f = Filter::parse("mod:socket,exe.contains:curl,pid:42,port:8080").unwrap();
        assert_eq!(f.modules(), vec![Module::Socket]);
        assert_eq!(
            f.strings(StrKey::ExeContains).collect::<Vec<_>>(),
            vec!["curl"]
        );
        assert_eq!(f.pids().collect::<Vec<_>>(), vec![42]);
        assert_eq!(f.ports().collect::<Vec<_>>(), vec![8080]);
        assert!(!f.selects_all());
    }

    #[test]
    fn no_mod_means_socket_and_mods_add_up() {
        assert_eq!(
            Filter::parse("exe:/bin/x").unwrap().modules(),
            vec![Module::Socket]
        );
        let f = Filter::parse("mod:process,mod:socket").unwrap();
        assert_eq!(f.modules(), vec![Module::Socket, Module::Process]);
        assert!(f.selects_all());
    }

    #[test]
    fn value_is_everything_after_the_first_colon() {
        let f = Filter::parse("exe.contains:a:b").unwrap();
        assert_eq!(
            f.strings(StrKey::ExeContains).collect::<Vec<_>>(),
            vec!["a:b"]
        );
    }

    #[test]
    fn display_round_trips() {
        let text = "mod:socket,exe.endsWith:/curl,comm:curl,pid:7,port:443";
        let f = Filter::parse(text).unwrap();
        assert_eq!(f.to_string(), text);
        assert_eq!(Filter::parse(&f.to_string()).unwrap(), f);
    }

    #[test]
    fn same_key_ors_different_keys_and() {
        let f = Filter::parse("exe.contains:curl,exe.contains:wget,comm:curl").unwrap();
        assert!(f.matches_process(b"/usr/bin/curl", b"curl", 1, 0));
        assert!(!f.matches_process(b"/usr/bin/wget", b"wget", 1, 0));
        assert!(f.matches_process(b"/usr/bin/wget", b"curl", 1, 0));
        let f = Filter::parse("exe.startsWith:/usr/,exe.endsWith:nginx,pid:9").unwrap();
        assert!(f.matches_process(b"/usr/sbin/nginx", b"nginx", 9, 0));
        let mine = f.restricted_to_uid(1000);
        assert!(!mine.matches_process(b"/usr/sbin/nginx", b"nginx", 9, 0));
        assert!(mine.matches_process(b"/usr/sbin/nginx", b"nginx", 9, 1000));
        assert_eq!(
            mine.to_string(),
            "exe.startsWith:/usr/,exe.endsWith:nginx,pid:9,uid:1000"
        );
        assert!(!f.matches_process(b"/usr/sbin/nginx", b"nginx", 8, 0));
        assert!(!f.matches_process(b"/opt/nginx", b"nginx", 9, 0));
    }

    #[test]
    fn ports_match_either_end() {
        let f = Filter::parse("port:80").unwrap();
        assert!(f.matches_ports(Some(80), Some(5555)));
        assert!(f.matches_ports(None, Some(80)));
        assert!(!f.matches_ports(None, None));
        assert!(Filter::parse("mod:socket")
            .unwrap()
            .matches_ports(None, None));
    }

    fn err(text: &str) -> FilterError {
        Filter::parse(text).unwrap_err()
    }

    #[test]
    fn each_error_class_names_the_term() {
        assert_eq!(err(""), FilterError::Empty);
        assert!(matches!(
            err("mod:socket,,exe:x"),
            FilterError::EmptyTerm { position: 2, .. }
        ));
        assert!(matches!(
            err("curl"),
            FilterError::NoColon { position: 1, .. }
        ));
        let e = err("mod:socket,exe.contain:curl");
        assert!(
            matches!(e, FilterError::UnknownKey { position: 2, ref key, .. } if key == "exe.contain")
        );
        let msg = e.to_string();
        assert!(msg.contains("term 2 `exe.contain:curl`"), "{msg}");
        assert!(msg.contains("exe.contains, exe.startsWith"), "{msg}");
        assert!(matches!(
            err("mod:sockets"),
            FilterError::UnknownModule { position: 1, .. }
        ));
        assert!(matches!(
            err("exe:"),
            FilterError::EmptyValue { position: 1, .. }
        ));
        assert!(matches!(err("pid:abc"), FilterError::BadNumber { .. }));
        assert!(matches!(err("pid:0"), FilterError::BadNumber { .. }));
        assert!(matches!(err("port:70000"), FilterError::BadNumber { .. }));
        assert!(matches!(
            err("comm:a-very-long-task-name"),
            FilterError::TooLong { max: 15, .. }
        ));
        let long = format!("exe.contains:{}", "a".repeat(300));
        assert!(matches!(err(&long), FilterError::TooLong { .. }));
        assert!(matches!(err("exe:a\u{7}b"), FilterError::Control { .. }));
        let e = err("fd:sockets");
        assert!(matches!(e, FilterError::UnknownFdKind { position: 1, .. }));
        assert!(e.to_string().contains("valid kinds: socket, any"), "{e}");
    }

    #[test]
    fn fd_terms_keep_sockets_only_unless_any() {
        let only = |text: &str| Filter::parse(text).unwrap().sockets_only();
        assert!(only("fd:socket,exe:/usr/bin/curl"));
        assert!(
            !only("exe:/usr/bin/curl"),
            "no fd term: every fd, as --bpf-trace"
        );
        assert!(!only("fd:socket,fd:any"), "alternatives: any of them");
        assert!(!only("fd:any"));
        let f = Filter::parse("fd:socket,mod:process").unwrap();
        assert_eq!(f.to_string(), "fd:socket,mod:process");
        assert_eq!(Filter::parse(&f.to_string()).unwrap(), f);
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::{Filter, KEYS};

        /// A term of any key with a value drawn from letters, digits,
        /// paths, spaces, colons, non-ASCII and numbers of every size.
        fn term() -> impl Strategy<Value = String> {
            let value = prop_oneof!["[a-zA-Z0-9/._ :-]{0,40}", "[0-9]{1,12}", "\\PC{0,8}",];
            (prop::sample::select(KEYS), value).prop_map(|(k, v)| format!("{k}:{v}"))
        }

        proptest! {
            /// Whatever parses, prints in a form that parses to the same filter.
            #[test]
            fn display_round_trips(terms in prop::collection::vec(term(), 1..6)) {
                let text = terms.join(",");
                if let Ok(filter) = Filter::parse(&text) {
                    let shown = filter.to_string();
                    prop_assert_eq!(Filter::parse(&shown), Ok(filter), "{} -> {}", text, shown);
                }
            }

            /// Any input gets an answer, never a panic.
            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
                let _ = Filter::parse(&text);
            }
        }
    }
}
