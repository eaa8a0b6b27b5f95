//! Grant durations as people write them: `90s`, `15m`, `2h`, `1d`, `1h30m`.
//!
//! Units run from days down to seconds, each at most once and in that order, so a value
//! has exactly one meaning. The canonical form printed back is the same notation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest duration jit will parse at all (policy limits are usually far lower).
pub const MAX_PARSEABLE_SECS: u64 = 366 * 24 * 3600;

/// The accepted notation, shown in every duration error.
pub const DURATION_FORMS: &str = "`90s`, `15m`, `2h`, `1d` or `1h30m`";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("no duration given; write it as {DURATION_FORMS}")]
    Empty,
    #[error("`{0}` is not a duration; write it as {DURATION_FORMS}")]
    Invalid(String),
    #[error("`{0}` is zero; a duration must be positive, written as {DURATION_FORMS}")]
    Zero(String),
    #[error("`{0}` is too long; the largest duration jit accepts is 366d")]
    TooLong(String),
}

/// A positive duration, stored in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GrantDuration(u64);

impl GrantDuration {
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let text = input.trim();
        if text.is_empty() {
            return Err(DurationError::Empty);
        }
        let invalid = || DurationError::Invalid(text.to_owned());
        let units = [('d', 86_400u64), ('h', 3_600), ('m', 60), ('s', 1)];
        let mut next_unit = 0usize;
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 9 {
                return Err(invalid());
            }
            let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            let unit = rest[digits..].chars().next().ok_or_else(invalid)?;
            let position = units[next_unit..]
                .iter()
                .position(|(u, _)| *u == unit)
                .ok_or_else(invalid)?;
            let (_, secs) = units[next_unit + position];
            next_unit += position + 1;
            total = value
                .checked_mul(secs)
                .and_then(|v| v.checked_add(total))
                .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
            rest = &rest[digits + unit.len_utf8()..];
        }
        if total == 0 {
            return Err(DurationError::Zero(text.to_owned()));
        }
        if total > MAX_PARSEABLE_SECS {
            return Err(DurationError::TooLong(text.to_owned()));
        }
        Ok(Self(total))
    }

    pub const fn from_secs(secs: u64) -> Self {
        Self(secs)
    }

    pub const fn from_mins(mins: u64) -> Self {
        Self(mins * 60)
    }

    pub const fn from_hours(hours: u64) -> Self {
        Self(hours * 3600)
    }

    pub const fn as_secs(self) -> u64 {
        self.0
    }

    pub fn to_chrono(self) -> chrono::Duration {
        chrono::Duration::seconds(self.0 as i64)
    }

    /// Half of this duration, rounded down to the second (at least one second).
    pub fn half(self) -> Self {
        Self((self.0 / 2).max(1))
    }

    /// Words for people: "2 hours", "1 hour 30 minutes", "90 seconds" stays "1 minute 30 seconds".
    pub fn humanize(self) -> String {
        let parts = [
            (self.0 / 86_400, "day"),
            (self.0 % 86_400 / 3_600, "hour"),
            (self.0 % 3_600 / 60, "minute"),
            (self.0 % 60, "second"),
        ];
        let words: Vec<String> = parts
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, unit)| format!("{n} {unit}{}", if *n == 1 { "" } else { "s" }))
            .collect();
        words.join(" ")
    }
}

impl fmt::Display for GrantDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (d, h, m, s) = (
            self.0 / 86_400,
            self.0 % 86_400 / 3_600,
            self.0 % 3_600 / 60,
            self.0 % 60,
        );
        for (value, unit) in [(d, 'd'), (h, 'h'), (m, 'm'), (s, 's')] {
            if value > 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for GrantDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for GrantDuration {
    type Error = DurationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<GrantDuration> for String {
    fn from(value: GrantDuration) -> String {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        for (text, secs) in [
            ("90s", 90),
            ("15m", 900),
            ("2h", 7200),
            ("1d", 86_400),
            ("1h30m", 5400),
            ("1d2h3m4s", 93_784),
            (" 2h ", 7200),
            ("120m", 7200),
        ] {
            assert_eq!(
                GrantDuration::parse(text).unwrap().as_secs(),
                secs,
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_everything_else_with_the_accepted_forms() {
        for text in [
            "2",
            "h",
            "2x",
            "2H",
            "1m1h",
            "1h1h",
            "1.5h",
            "-1h",
            "+1h",
            "2 h",
            "1h 30m",
            "two",
            "1hour",
            "１h",
            "1h30",
            "9999999999s",
        ] {
            let err = GrantDuration::parse(text).unwrap_err();
            assert!(
                err.to_string().contains("1h30m") || matches!(err, DurationError::TooLong(_)),
                "{text}: {err}"
            );
        }
        assert_eq!(GrantDuration::parse(""), Err(DurationError::Empty));
        assert!(matches!(
            GrantDuration::parse("0s"),
            Err(DurationError::Zero(_))
        ));
        assert!(matches!(
            GrantDuration::parse("367d"),
            Err(DurationError::TooLong(_))
        ));
        assert!(GrantDuration::parse("366d").is_ok());
    }

    #[test]
    fn displays_canonically_and_round_trips() {
        for secs in [1, 59, 60, 61, 3600, 5400, 86_400, 93_784] {
            let d = GrantDuration::from_secs(secs);
            assert_eq!(GrantDuration::parse(&d.to_string()).unwrap(), d);
        }
        assert_eq!(GrantDuration::from_secs(5400).to_string(), "1h30m");
        assert_eq!(
            GrantDuration::from_secs(5400).humanize(),
            "1 hour 30 minutes"
        );
        assert_eq!(GrantDuration::from_secs(7200).humanize(), "2 hours");
    }
}
