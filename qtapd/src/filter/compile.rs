//! Compiles the filters of all sessions into the kernel's selection tables:
//! one `Config` and the `PATTERNS` entries (see `qtap_common::Config` for
//! how the kernel combines them at exec).

use std::collections::{BTreeMap, BTreeSet};

use qtap_common::{hash_step, limit, pred, Config, PatternKey, HASH_MUL};

use super::{Filter, StrKey};
use crate::cgroup::Cgroup;

/// The tables for the kernel, ready to be written.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub config: Config,
    pub patterns: BTreeMap<PatternKeyOrd, u64>,
}

/// `PatternKey` with an order, so the compiled tables are deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PatternKeyOrd {
    pub key: u8,
    pub len: u32,
    pub hash: u64,
}

impl From<PatternKeyOrd> for PatternKey {
    fn from(k: PatternKeyOrd) -> Self {
        PatternKey {
            key: k.key,
            _pad: [0; 3],
            len: k.len,
            hash: k.hash,
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("the active filters use {0} distinct `exe.contains` lengths; the kernel matches at most {max}", max = limit::CONTAINS_LENS)]
    TooManyContainsLengths(usize),
    #[error("the active filters need {0} kernel patterns; the limit is {max}", max = limit::PATTERNS)]
    TooManyPatterns(usize),
    #[error("session slot {0} is out of range")]
    BadSlot(usize),
}

/// The string hash the kernel computes (`qtap_common::hash_step`).
#[must_use]
pub fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |h, &b| hash_step(h, b))
}

fn pred_of(key: StrKey) -> u8 {
    match key {
        StrKey::Exe => pred::EXE,
        StrKey::ExeContains => pred::EXE_CONTAINS,
        StrKey::ExeStartsWith => pred::EXE_PREFIX,
        StrKey::ExeEndsWith => pred::EXE_SUFFIX,
        StrKey::Comm => pred::COMM,
    }
}

fn set_len_bit(bits: &mut [u64; 4], len: usize) {
    bits[(len >> 6) & 3] |= 1 << (len & 63);
}

/// Compiles `(slot, filter)` pairs; slot `s` is bit `s` of every mask.
/// `cgroups` are the host's cgroups (`cgroup::walk`): a session's
/// cgroup terms become the ids of those they match.
pub fn compile<'a>(
    sessions: impl IntoIterator<Item = (usize, &'a Filter)>,
    self_tgid: u32,
    cgroups: &[Cgroup],
) -> Result<Compiled, CompileError> {
    let mut out = Compiled::default();
    out.config.self_tgid = self_tgid;
    let mut contains_lens = BTreeSet::new();
    for (slot, filter) in sessions {
        if slot >= qtap_common::MAX_SESSIONS {
            return Err(CompileError::BadSlot(slot));
        }
        let bit = 1u64 << slot;
        let cfg = &mut out.config;
        if filter.sockets_only() {
            cfg.sockets_only |= bit;
        }
        cfg.active |= bit;
        for module in filter.modules() {
            for &family in module.kernel_families() {
                cfg.modules[family] |= bit;
            }
        }
        for key in [
            StrKey::Exe,
            StrKey::ExeContains,
            StrKey::ExeStartsWith,
            StrKey::ExeEndsWith,
            StrKey::Comm,
        ] {
            let p = pred_of(key);
            for value in filter.strings(key) {
                let len = value.len();
                cfg.uses[p as usize] |= bit;
                match key {
                    StrKey::ExeStartsWith => set_len_bit(&mut cfg.prefix_lens, len),
                    StrKey::ExeEndsWith => set_len_bit(&mut cfg.suffix_lens, len),
                    StrKey::ExeContains => {
                        contains_lens.insert(len);
                    }
                    StrKey::Exe | StrKey::Comm => {}
                }
                let k = PatternKeyOrd {
                    key: p,
                    len: len as u32,
                    hash: hash(value.as_bytes()),
                };
                *out.patterns.entry(k).or_default() |= bit;
            }
        }
        if filter.has_cgroup_terms() {
            out.config.uses[pred::CGROUP as usize] |= bit;
            for cgroup in cgroups.iter().filter(|c| filter.matches_cgroup(Some(c))) {
                let k = PatternKeyOrd {
                    key: pred::CGROUP,
                    len: 0,
                    hash: cgroup.id,
                };
                *out.patterns.entry(k).or_default() |= bit;
            }
        }
        let numbers = filter
            .uids()
            .map(|u| (pred::UID, u))
            .chain(filter.pids().map(|p| (pred::PID, p)));
        for (key, value) in numbers {
            out.config.uses[key as usize] |= bit;
            let k = PatternKeyOrd {
                key,
                len: 0,
                hash: u64::from(value),
            };
            *out.patterns.entry(k).or_default() |= bit;
        }
    }
    if contains_lens.len() > limit::CONTAINS_LENS {
        return Err(CompileError::TooManyContainsLengths(contains_lens.len()));
    }
    if out.patterns.len() > limit::PATTERNS as usize {
        return Err(CompileError::TooManyPatterns(out.patterns.len()));
    }
    for (i, len) in contains_lens.into_iter().enumerate() {
        out.config.contains_lens[i] = len as u32;
        out.config.contains_pows[i] = (0..len).fold(1u64, |p, _| p.wrapping_mul(HASH_MUL));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's rolling window hash, written the way the probe runs it.
    fn rolling_hits(exe: &[u8], width: usize, pow: u64) -> Vec<u64> {
        let mut h = 0u64;
        let mut hits = Vec::new();
        for i in 0..exe.len() {
            h = hash_step(h, exe[i]);
            if i >= width {
                h = h.wrapping_sub(u64::from(exe[i - width]).wrapping_mul(pow));
            }
            if i + 1 >= width {
                hits.push(h);
            }
        }
        hits
    }

    #[test]
    fn contains_hash_matches_the_rolling_window() {
        let f = Filter::parse("exe.contains:curl").unwrap();
        let c = compile([(3, &f)], 1, &[]).unwrap();
        assert_eq!(c.config.active, 1 << 3);
        assert_eq!(c.config.uses[pred::EXE_CONTAINS as usize], 1 << 3);
        assert_eq!(c.config.contains_lens[0], 4);
        let windows = rolling_hits(b"/usr/bin/curl", 4, c.config.contains_pows[0]);
        assert!(windows.contains(&hash(b"curl")));
        let key = PatternKeyOrd {
            key: pred::EXE_CONTAINS,
            len: 4,
            hash: hash(b"curl"),
        };
        assert_eq!(c.patterns.get(&key), Some(&(1 << 3)));
    }

    /// Cgroup terms become the ids of the cgroups they match; keys AND,
    /// values OR, as everywhere.
    #[test]
    fn cgroup_terms_become_the_ids_they_match() {
        let host = [
            Cgroup::new(10, "/system.slice/nginx.service"),
            Cgroup::new(11, "/system.slice/cron.service"),
            Cgroup::new(
                12,
                &format!("/system.slice/docker-{}.scope", "ab".repeat(32)),
            ),
            Cgroup::new(13, "/user.slice"),
        ];
        let ids = |filter: &str| {
            let f = Filter::parse(filter).unwrap();
            let c = compile([(2, &f)], 1, &host).unwrap();
            assert_eq!(c.config.uses[pred::CGROUP as usize], 1 << 2);
            c.patterns
                .iter()
                .filter(|(k, _)| k.key == pred::CGROUP)
                .map(|(k, &mask)| {
                    assert_eq!(mask, 1 << 2);
                    k.hash
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("cgroup:/system.slice/"), [10, 11, 12]);
        assert_eq!(ids("unit:nginx.service,unit:cron.service"), [10, 11]);
        assert_eq!(ids("container:abab"), [12]);
        assert_eq!(ids("cgroup:/system.slice/,unit:cron.service"), [11]);
        // Nothing matches yet: the session is told to the kernel, and
        // selects nothing until such a cgroup exists.
        assert!(ids("unit:absent.service").is_empty());
        let plain = compile([(0, &Filter::parse("pid:1").unwrap())], 1, &host).unwrap();
        assert_eq!(plain.config.uses[pred::CGROUP as usize], 0);
    }

    #[test]
    fn sockets_only_sessions_are_told_to_the_kernel() {
        let sockets = Filter::parse("fd:socket,pid:7").unwrap();
        let any = Filter::parse("pid:7").unwrap();
        let c = compile([(1, &sockets), (4, &any)], 1, &[]).unwrap();
        assert_eq!(c.config.sockets_only, 1 << 1);
    }

    #[test]
    fn suffix_hash_matches_the_backward_pass() {
        let exe = b"/usr/sbin/nginx";
        let (mut g, mut p) = (0u64, 1u64);
        for &b in exe[exe.len() - 5..].iter().rev() {
            g = g.wrapping_add(u64::from(b).wrapping_mul(p));
            p = p.wrapping_mul(HASH_MUL);
        }
        assert_eq!(g, hash(b"nginx"));
    }

    #[test]
    fn data_and_protocol_need_both_kernel_families() {
        for text in ["mod:data,exe:/bin/a", "mod:protocol,exe:/bin/a"] {
            let f = Filter::parse(text).unwrap();
            let c = compile([(0, &f)], 1, &[]).unwrap();
            assert_eq!(c.config.modules[qtap_common::module::SOCKET], 1, "{text}");
            assert_eq!(c.config.modules[qtap_common::module::OPENSSL], 1, "{text}");
        }
        let f = Filter::parse("mod:openssl,exe:/bin/a").unwrap();
        let c = compile([(0, &f)], 1, &[]).unwrap();
        assert_eq!(c.config.modules[qtap_common::module::SOCKET], 0);
    }

    #[test]
    fn sessions_share_patterns_and_modules_are_masked() {
        let a = Filter::parse("mod:process,exe:/bin/a").unwrap();
        let b = Filter::parse("exe:/bin/a,pid:5").unwrap();
        let c = compile([(0, &a), (1, &b)], 1, &[]).unwrap();
        assert_eq!(c.config.active, 0b11);
        assert_eq!(c.config.modules[qtap_common::module::SOCKET], 0b10);
        assert_eq!(c.config.modules[qtap_common::module::OPENSSL], 0);
        assert_eq!(c.config.uses[pred::PID as usize], 0b10);
        let key = PatternKeyOrd {
            key: pred::EXE,
            len: 6,
            hash: hash(b"/bin/a"),
        };
        assert_eq!(c.patterns.get(&key), Some(&0b11));
    }

    #[test]
    fn too_many_contains_lengths_is_an_error() {
        let text: Vec<String> = (1..=9)
            .map(|n| format!("exe.contains:{}", "x".repeat(n)))
            .collect();
        let f = Filter::parse(&text.join(",")).unwrap();
        assert_eq!(
            compile([(0, &f)], 1, &[]),
            Err(CompileError::TooManyContainsLengths(9))
        );
    }
}
