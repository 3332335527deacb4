//! The `ts` of an event: RFC 3339 in UTC with nanoseconds, made here for
//! qtapd (`Event` messages) and for qtapctl (events decoded from compact
//! records), so both spell the same instant the same way.

use std::time::{Duration, SystemTime};

/// Formats wall-clock instants, reusing the text of the last second:
/// events come in time order, so most share it.
#[derive(Clone, Debug, Default)]
pub struct Rfc3339 {
    /// The last second formatted, e.g. `2026-11-27T06:42:40.`
    second: Option<(u64, String)>,
}

impl Rfc3339 {
    #[must_use]
    pub fn new() -> Rfc3339 {
        Rfc3339::default()
    }

    /// `unix_ns` (nanoseconds since the Unix epoch) as
    /// `2026-11-27T06:42:40.123456789Z`.
    pub fn format(&mut self, unix_ns: u64) -> String {
        let mut out = String::with_capacity(30);
        self.write(unix_ns, &mut out);
        out
    }

    /// [`Rfc3339::format`] into `out`, replacing what it held.
    pub fn write(&mut self, unix_ns: u64, out: &mut String) {
        let (secs, nanos) = (unix_ns / 1_000_000_000, unix_ns % 1_000_000_000);
        let second = match &mut self.second {
            Some((at, text)) if *at == secs => text,
            slot => {
                let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
                let text = humantime::format_rfc3339_seconds(whole).to_string();
                let text = format!("{}.", text.trim_end_matches('Z'));
                &mut slot.insert((secs, text)).1
            }
        };
        out.clear();
        out.push_str(second);
        // Nine digits by hand: a padded `write!` went through `core::fmt`,
        // which showed in a JSON follower's profile.
        let mut digits = *b"000000000Z";
        let mut rest = nanos;
        for digit in digits[..9].iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.push_str(std::str::from_utf8(&digits).expect("ASCII digits"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_humantime_across_seconds() {
        let mut f = Rfc3339::new();
        let base = 1_764_572_560_000_000_000u64;
        for ns in [0, 999_999_999, 1_000_000_000, 1_000_000_001, 5_123_456_789] {
            let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(base + ns);
            assert_eq!(
                f.format(base + ns),
                humantime::format_rfc3339_nanos(at).to_string()
            );
        }
    }
}
