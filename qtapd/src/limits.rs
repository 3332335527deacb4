//! What each caller may ask of qtapd: the quotas that keep one user from
//! exhausting what all share (session slots, follower queues and the
//! memory they hold, the kernel's pattern tables, capture size), and the
//! OTLP collectors a user other than root may name. One place for every
//! limit; the values come from qtapd's flags (`--user-max-*`,
//! `--max-queued-bytes`, `--otlp-allow`), and root's tier is what the
//! kernel tables and the wire allow.
//!
//! Checks of a single request are pure functions here, called by
//! `grpc::validate`; checks against what already runs are in the engine.

use std::time::Duration;

use qtap_common::{limit, MAX_SESSIONS};

use crate::engine::Caller;

/// Longest session name, for everyone (it is shown in every list).
pub const MAX_NAME_LEN: usize = 128;
/// Longest follower queue anyone may ask for (items).
pub const MAX_QUEUE_LEN: usize = 1 << 20;
/// Default follower queue (items).
pub const DEFAULT_QUEUE_LEN: usize = 4096;

/// The limits of one kind of caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tier {
    /// Sessions one uid may hold at once.
    pub sessions: usize,
    /// Followers (streams and OTLP exports) one uid may hold at once,
    /// and one session may have.
    pub followers: usize,
    /// Longest follower queue (items).
    pub queue_len: usize,
    /// Bytes of events one follower's queue may hold.
    pub queue_bytes: u64,
    /// Longest idle timeout a session may ask for.
    pub idle_timeout: Duration,
    /// Largest `capture_bytes`.
    pub capture_bytes: u32,
    /// Most terms in one filter.
    pub filter_terms: usize,
    /// Distinct `exe.contains` lengths one uid's sessions may use
    /// together (the kernel matches 8 in all).
    pub contains_lengths: usize,
}

impl Tier {
    /// Root's: the kernel's and the wire's own bounds.
    pub const ROOT: Tier = Tier {
        sessions: MAX_SESSIONS,
        followers: 1024,
        queue_len: MAX_QUEUE_LEN,
        queue_bytes: 1 << 30,
        idle_timeout: Duration::from_secs(u32::MAX as u64),
        capture_bytes: limit::CAPTURE_MAX as u32,
        filter_terms: 512,
        contains_lengths: limit::CONTAINS_LENS,
    };
}

/// Every limit qtapd enforces on requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Idle timeout of a session that asks for none.
    pub default_idle: Duration,
    /// Callers other than root.
    pub user: Tier,
    /// Bytes of events all follower queues may hold together.
    pub max_queued_bytes: u64,
    /// OTLP collectors a caller other than root may name (exactly).
    pub otlp_allow: Vec<String>,
}

/// Of the kernel's shared tables, the share that sessions of callers
/// other than root may fill together: the rest stays free for root.
pub const USER_PATTERNS: usize = limit::PATTERNS as usize / 2;
pub const USER_SLOTS: usize = MAX_SESSIONS - 8;
pub const USER_CONTAINS_LENGTHS: usize = limit::CONTAINS_LENS - 2;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            default_idle: Duration::from_mins(10),
            user: Tier {
                sessions: 4,
                followers: 8,
                queue_len: 65_536,
                queue_bytes: 16 << 20,
                idle_timeout: Duration::from_hours(1),
                capture_bytes: 1024,
                filter_terms: 16,
                contains_lengths: 2,
            },
            max_queued_bytes: 512 << 20,
            otlp_allow: Vec::new(),
        }
    }
}

/// A request beyond a limit: `InvalidArgument` for a value no request
/// may carry, `ResourceExhausted` for one that exceeds what is left.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Denied(String),
}

impl From<LimitError> for tonic::Status {
    fn from(e: LimitError) -> Self {
        match e {
            LimitError::Invalid(m) => tonic::Status::invalid_argument(m),
            LimitError::Exhausted(m) => tonic::Status::resource_exhausted(m),
            LimitError::Denied(m) => tonic::Status::permission_denied(m),
        }
    }
}

/// How a limit is named in messages: who it applies to, and the flag
/// that sets it.
fn whose(caller: Caller, flag: &str) -> String {
    if caller.is_root() {
        "(root's limit)".to_owned()
    } else {
        format!("(limit for users other than root: --{flag})")
    }
}

impl Limits {
    /// The tier that applies to `caller`.
    #[must_use]
    pub fn tier(&self, caller: Caller) -> &Tier {
        if caller.is_root() {
            &Tier::ROOT
        } else {
            &self.user
        }
    }

    /// Checks a session name: at most [`MAX_NAME_LEN`] bytes, no control
    /// characters (it is printed on other users' terminals).
    ///
    /// # Errors
    /// `Invalid` naming the problem.
    pub fn check_name(name: &str) -> Result<(), LimitError> {
        if name.len() > MAX_NAME_LEN {
            return Err(LimitError::Invalid(format!(
                "the session name is {} bytes; the limit is {MAX_NAME_LEN}",
                name.len()
            )));
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(LimitError::Invalid(format!(
                "the session name contains the control character {c:?}; names are printed on terminals"
            )));
        }
        Ok(())
    }

    /// The idle timeout a request gets (0: the default).
    ///
    /// # Errors
    /// `Invalid` when longer than the caller's tier allows.
    pub fn idle_timeout(&self, caller: Caller, secs: u32) -> Result<Duration, LimitError> {
        let longest = self.tier(caller).idle_timeout;
        let asked = match secs {
            0 => return Ok(self.default_idle.min(longest)),
            secs => Duration::from_secs(u64::from(secs)),
        };
        if asked > longest {
            return Err(LimitError::Invalid(format!(
                "idle_timeout_secs {secs} exceeds {} {}",
                longest.as_secs(),
                whose(caller, "user-max-idle-timeout")
            )));
        }
        Ok(asked)
    }

    /// # Errors
    /// `Invalid` when above the caller's tier.
    pub fn check_capture(&self, caller: Caller, bytes: u32) -> Result<(), LimitError> {
        let most = self.tier(caller).capture_bytes;
        if bytes > most {
            return Err(LimitError::Invalid(format!(
                "capture_bytes {bytes} exceeds {most} {}",
                whose(caller, "user-max-capture-bytes")
            )));
        }
        Ok(())
    }

    /// # Errors
    /// `Invalid` when the filter has more terms than the tier allows.
    pub fn check_terms(&self, caller: Caller, terms: usize) -> Result<(), LimitError> {
        let most = self.tier(caller).filter_terms;
        if terms > most {
            return Err(LimitError::Invalid(format!(
                "the filter has {terms} terms; the limit is {most} {}",
                whose(caller, "user-max-filter-terms")
            )));
        }
        Ok(())
    }

    /// The queue length a follow request gets (0: the default).
    ///
    /// # Errors
    /// `Invalid` when longer than the tier allows.
    pub fn queue_len(&self, caller: Caller, asked: u32) -> Result<usize, LimitError> {
        let most = self.tier(caller).queue_len;
        match asked as usize {
            0 => Ok(DEFAULT_QUEUE_LEN.min(most)),
            n if n > most => Err(LimitError::Invalid(format!(
                "queue_len {n} exceeds {most} {}",
                whose(caller, "user-max-queue-len")
            ))),
            n => Ok(n),
        }
    }

    /// Whether `caller` may have root qtapd connect to `endpoint`.
    ///
    /// # Errors
    /// `Denied` naming the allow-list flag.
    pub fn check_otlp(&self, caller: Caller, endpoint: &str) -> Result<(), LimitError> {
        let same = |a: &str| a.trim_end_matches('/') == endpoint.trim_end_matches('/');
        if caller.is_root() || self.otlp_allow.iter().any(|a| same(a)) {
            return Ok(());
        }
        Err(LimitError::Denied(format!(
            "uid {} may not export to {endpoint}: users other than root may name only the \
             collectors in qtapd's --otlp-allow ({})",
            caller.uid,
            if self.otlp_allow.is_empty() {
                "empty".to_owned()
            } else {
                self.otlp_allow.join(", ")
            }
        )))
    }
}

/// `held` of something the tier allows `most` of: one more is refused.
///
/// # Errors
/// `Exhausted` naming the limit and its flag.
pub fn check_count(
    caller: Caller,
    what: &str,
    held: usize,
    most: usize,
    flag: &str,
) -> Result<(), LimitError> {
    if held >= most {
        return Err(LimitError::Exhausted(format!(
            "uid {} already holds {held} {what}; the limit is {most} {}",
            caller.uid,
            whose(caller, flag)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: Caller = Caller { uid: 1000 };
    const ROOT: Caller = Caller { uid: 0 };

    #[test]
    fn users_get_less_than_root() {
        let limits = Limits::default();
        let (user, root) = (limits.tier(USER), limits.tier(ROOT));
        assert!(user.sessions < root.sessions);
        assert!(user.followers < root.followers);
        assert!(user.queue_len < root.queue_len);
        assert!(user.queue_bytes < root.queue_bytes);
        assert!(user.idle_timeout < root.idle_timeout);
        assert!(user.capture_bytes < root.capture_bytes);
        assert!(user.filter_terms < root.filter_terms);
        assert!(user.contains_lengths < root.contains_lengths);
    }

    #[test]
    fn each_refusal_names_its_limit() {
        let limits = Limits::default();
        let e = limits.idle_timeout(USER, u32::MAX).unwrap_err();
        assert!(e.to_string().contains("--user-max-idle-timeout"), "{e}");
        assert!(limits.idle_timeout(ROOT, u32::MAX).is_ok());
        let e = limits.check_capture(USER, 4096).unwrap_err();
        assert!(e.to_string().contains("exceeds 1024"), "{e}");
        assert!(limits.check_capture(ROOT, 4096).is_ok());
        let e = limits.queue_len(USER, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("--user-max-queue-len"), "{e}");
        let e = check_count(USER, "sessions", 4, 4, "user-max-sessions").unwrap_err();
        assert!(matches!(e, LimitError::Exhausted(_)));
        assert!(e.to_string().contains("already holds 4 sessions"), "{e}");
    }

    #[test]
    fn names_are_short_and_printable() {
        assert!(Limits::check_name("nginx debugging").is_ok());
        assert!(Limits::check_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
        let e = Limits::check_name("a\x1b[2Jb").unwrap_err();
        assert!(e.to_string().contains("control character"), "{e}");
    }

    #[test]
    fn otlp_endpoints_of_users_come_from_the_allow_list() {
        let mut limits = Limits::default();
        let e = limits
            .check_otlp(USER, "http://169.254.169.254:80")
            .unwrap_err();
        assert!(matches!(e, LimitError::Denied(_)), "{e}");
        assert!(limits.check_otlp(ROOT, "http://169.254.169.254:80").is_ok());
        limits.otlp_allow = vec!["http://collector:4317/".into()];
        assert!(limits.check_otlp(USER, "http://collector:4317").is_ok());
        assert!(limits.check_otlp(USER, "http://collector:4318").is_err());
    }
}
