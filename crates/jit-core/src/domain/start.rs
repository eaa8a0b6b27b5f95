//! A scheduled start: access that begins later than its approval (`/jit request db 2h at 23:00`).
//!
//! Parsing is syntactic ([`StartAt::parse`]); turning what was typed into an instant needs the
//! current time and the requester's UTC offset ([`StartAt::resolve`]), both passed in. Whether a
//! start is allowed (not past, not further ahead than `max_start_ahead`) is the policy's call
//! ([`crate::domain::policy::Policy::check_start`]).

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

/// The forms a start is written in, for error messages and the help.
pub const START_FORMS: &str = "`HH:MM` (24-hour, the next time it comes round in your Slack time zone) or a date and time such as `2026-12-24T22:00Z` (with `Z` or an offset like `+01:00`; without one, in your Slack time zone)";

/// A start as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// `23:00`: the next time the requester's clock shows it.
    Clock(NaiveTime),
    /// `2026-12-24T22:00`: that wall time in the requester's time zone.
    Local(NaiveDateTime),
    /// `2026-12-24T22:00Z`, `2026-12-24T23:00+01:00`: an instant.
    Instant(DateTime<Utc>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a start time. Write {START_FORMS}.")]
pub struct StartError(pub String);

impl StartAt {
    pub fn parse(text: &str) -> Result<StartAt, StartError> {
        let bad = || StartError(text.to_owned());
        let t = text.trim();
        if t.is_empty() || t.len() > 40 {
            return Err(bad());
        }
        if !t.contains(['T', 't']) {
            return parse_clock(t).map(StartAt::Clock).ok_or_else(bad);
        }
        let (date, rest) = t.split_at(t.find(['T', 't']).ok_or_else(bad)?);
        let rest = &rest[1..];
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| bad())?;
        // The offset: `Z`, or `+HH:MM` / `-HH:MM` after the time.
        let (time, offset) = if let Some(time) = rest.strip_suffix(['Z', 'z']) {
            (time, Some(0))
        } else if let Some(at) = rest.rfind(['+', '-']) {
            let sign = if rest.as_bytes()[at] == b'-' { -1 } else { 1 };
            let (h, m) = rest[at + 1..].split_once(':').ok_or_else(bad)?;
            let (h, m): (i32, i32) = (parse_2(h).ok_or_else(bad)?, parse_2(m).ok_or_else(bad)?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            (&rest[..at], Some(sign * (h * 3600 + m * 60)))
        } else {
            (rest, None)
        };
        let time = parse_time(time).ok_or_else(bad)?;
        let local = date.and_time(time);
        Ok(match offset {
            None => StartAt::Local(local),
            Some(secs) => {
                let zone = FixedOffset::east_opt(secs).ok_or_else(bad)?;
                let at = zone.from_local_datetime(&local).single().ok_or_else(bad)?;
                StartAt::Instant(at.with_timezone(&Utc))
            }
        })
    }

    /// The instant this start means for someone whose clock is `tz_offset` seconds ahead of UTC
    /// (Slack's `tz_offset`), at `now`. A clock time that has passed today is tomorrow's.
    pub fn resolve(self, now: DateTime<Utc>, tz_offset: i32) -> DateTime<Utc> {
        let zone = FixedOffset::east_opt(tz_offset.clamp(-86_399, 86_399))
            .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"));
        match self {
            StartAt::Instant(at) => at,
            StartAt::Local(local) => local_to_utc(zone, local),
            StartAt::Clock(time) => {
                let today = now.with_timezone(&zone).date_naive();
                let at = local_to_utc(zone, today.and_time(time));
                if at > now { at } else { at + Duration::days(1) }
            }
        }
    }
}

fn local_to_utc(zone: FixedOffset, local: NaiveDateTime) -> DateTime<Utc> {
    // A fixed offset has no gaps or folds: the mapping is always single. At the edge of what
    // chrono can represent (a year typed as 262143) the offset is dropped rather than overflow;
    // such a start is refused as too far ahead anyway.
    local
        .checked_sub_signed(Duration::seconds(zone.local_minus_utc() as i64))
        .unwrap_or(local)
        .and_utc()
}

fn parse_2(text: &str) -> Option<i32> {
    (text.len() == 2 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// `HH:MM` or `H:MM`, 24-hour.
fn parse_clock(text: &str) -> Option<NaiveTime> {
    let (h, m) = text.split_once(':')?;
    if h.is_empty() || h.len() > 2 || !h.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m = parse_2(m)? as u32;
    NaiveTime::from_hms_opt(h, m, 0)
}

/// `HH:MM` or `HH:MM:SS` (fractions of a second are not accepted).
fn parse_time(text: &str) -> Option<NaiveTime> {
    let parts: Vec<&str> = text.split(':').collect();
    match parts.as_slice() {
        [h, m] => NaiveTime::from_hms_opt(parse_2(h)? as u32, parse_2(m)? as u32, 0),
        [h, m, s] => {
            NaiveTime::from_hms_opt(parse_2(h)? as u32, parse_2(m)? as u32, parse_2(s)? as u32)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            StartAt::parse("23:00"),
            Ok(StartAt::Clock(NaiveTime::from_hms_opt(23, 0, 0).unwrap()))
        );
        assert_eq!(
            StartAt::parse("7:05"),
            Ok(StartAt::Clock(NaiveTime::from_hms_opt(7, 5, 0).unwrap()))
        );
        assert_eq!(
            StartAt::parse("2026-12-24T22:00Z"),
            Ok(StartAt::Instant(utc("2026-12-24T22:00:00Z")))
        );
        assert_eq!(
            StartAt::parse("2026-12-24t22:00:30z"),
            Ok(StartAt::Instant(utc("2026-12-24T22:00:30Z")))
        );
        assert_eq!(
            StartAt::parse("2026-12-24T23:00+01:00"),
            Ok(StartAt::Instant(utc("2026-12-24T22:00:00Z")))
        );
        assert_eq!(
            StartAt::parse("2026-12-24T17:00-05:00"),
            Ok(StartAt::Instant(utc("2026-12-24T22:00:00Z")))
        );
        assert_eq!(
            StartAt::parse("2026-12-24T22:00"),
            Ok(StartAt::Local(
                NaiveDate::from_ymd_opt(2026, 12, 24)
                    .unwrap()
                    .and_hms_opt(22, 0, 0)
                    .unwrap()
            ))
        );
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            "",
            "24:00",
            "23:60",
            "2300",
            "23:0",
            "123:00",
            "tomorrow",
            "2026-13-01T10:00Z",
            "2026-12-24",
            "2026-12-24T",
            "2026-12-24T22Z",
            "2026-12-24T22:00+1",
            "2026-12-24T22:00+24:00",
            "2026-12-24T22:00:00.5Z",
            "-1:00",
            "+1:00",
        ] {
            let err = StartAt::parse(bad).unwrap_err();
            assert!(err.to_string().contains("HH:MM"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_clock_time_is_the_next_one_in_the_requesters_zone() {
        let now = utc("2026-11-23T14:00:00Z");
        let eleven_pm = StartAt::parse("23:00").unwrap();
        // UTC: 23:00 today.
        assert_eq!(eleven_pm.resolve(now, 0), utc("2026-11-23T23:00:00Z"));
        // Los Angeles (UTC-8): it is 06:00 there; 23:00 there is 07:00 UTC tomorrow.
        assert_eq!(
            eleven_pm.resolve(now, -8 * 3600),
            utc("2026-11-24T07:00:00Z")
        );
        // India (UTC+5:30): it is 19:30 there; 23:00 there is 17:30 UTC today.
        assert_eq!(
            eleven_pm.resolve(now, 5 * 3600 + 1800),
            utc("2026-11-23T17:30:00Z")
        );
        // A time already passed today (or now exactly) is tomorrow's.
        let two_pm = StartAt::parse("14:00").unwrap();
        assert_eq!(two_pm.resolve(now, 0), utc("2026-11-24T14:00:00Z"));
        let nine = StartAt::parse("09:00").unwrap();
        assert_eq!(nine.resolve(now, 0), utc("2026-11-24T09:00:00Z"));
        // Tokyo (UTC+9): it is 23:00 on the 23rd there; 09:00 there is 00:00 UTC on the 24th.
        assert_eq!(nine.resolve(now, 9 * 3600), utc("2026-11-24T00:00:00Z"));
    }

    /// Whatever is typed, parsing and resolving never panic (the slash command's fuzz target
    /// reaches them too).
    #[test]
    fn extreme_dates_neither_panic_nor_wrap() {
        let now = utc("2026-11-23T14:00:00Z");
        let mut parsed = Vec::new();
        for text in [
            "262142-12-31T23:59",
            "262143-12-31T23:59",
            "-262143-01-01T00:00",
            "262143-12-31T23:59-23:59",
            "-262143-01-01T00:00+23:59",
            "0000-01-01T00:00",
            "9999-12-31T23:59:59Z",
        ] {
            if let Ok(start) = StartAt::parse(text) {
                parsed.push(text);
                for tz in [-86_399, -43_200, 0, 50_400, 86_399] {
                    let _ = start.resolve(now, tz);
                }
            }
        }
        // The first day chrono can hold, minus a positive offset, would underflow.
        assert!(parsed.contains(&"-262143-01-01T00:00"), "{parsed:?}");
    }

    #[test]
    fn a_date_without_an_offset_is_in_the_requesters_zone() {
        let now = utc("2026-11-23T14:00:00Z");
        let local = StartAt::parse("2026-12-24T22:00").unwrap();
        assert_eq!(local.resolve(now, 0), utc("2026-12-24T22:00:00Z"));
        assert_eq!(local.resolve(now, 3600), utc("2026-12-24T21:00:00Z"));
        // An instant ignores the requester's zone.
        let instant = StartAt::parse("2026-12-24T22:00Z").unwrap();
        assert_eq!(instant.resolve(now, 3600), utc("2026-12-24T22:00:00Z"));
    }
}
