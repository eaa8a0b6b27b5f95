//! Time, injected. Every time-dependent decision asks a [`Clock`] so tests and the demo can
//! jump time instead of sleeping.
//!
//! Both clocks here never run backwards: when the wall clock steps back (an NTP correction, a
//! VM restore), the time they report keeps advancing at the rate of a monotonic source from the
//! last reading instead. A backward step therefore never delays a teardown or stretches a
//! grant; a forward step can only end things early, which is the safe direction.
//!
//! Two readings, for two jobs:
//! - [`Clock::now`] never runs backwards, and at start it is floored at the latest time jit
//!   recorded ([`SystemClock::floored`]), so a wall clock set back across a restart delays
//!   nothing. Grants, teardowns and the audit log use it.
//! - [`Clock::wall`] is the plain wall clock. Slack's signature window uses it: Slack stamps its
//!   requests with real time, so a forward jump that is later corrected must not lock every
//!   Slack request out until a restart.

use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};

pub trait Clock: Send + Sync + 'static {
    /// Time that never runs backwards (see the module docs).
    fn now(&self) -> DateTime<Utc>;

    /// The wall clock as it is, for comparing with timestamps others wrote (Slack's).
    fn wall(&self) -> DateTime<Utc> {
        self.now()
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// Combines a wall reading with the monotonic time elapsed since the previous reading.
#[derive(Debug)]
struct Guard {
    last: DateTime<Utc>,
    mono_at_last: StdDuration,
}

impl Guard {
    fn next(&mut self, wall: DateTime<Utc>, mono: StdDuration) -> DateTime<Utc> {
        let elapsed = mono.saturating_sub(self.mono_at_last);
        let carried = self.last + Duration::from_std(elapsed).unwrap_or_default();
        let now = wall.max(carried);
        self.last = now;
        self.mono_at_last = mono;
        now
    }
}

/// Wall-clock time that never goes backwards.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
    guard: Mutex<Guard>,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            guard: Mutex::new(Guard {
                last: Utc::now(),
                mono_at_last: StdDuration::ZERO,
            }),
        }
    }
}

impl SystemClock {
    /// A clock that starts no earlier than `floor` (the latest time recorded before a restart),
    /// and runs on from there at the monotonic rate until the wall clock catches up.
    pub fn floored(floor: DateTime<Utc>) -> Self {
        Self {
            origin: Instant::now(),
            guard: Mutex::new(Guard {
                last: Utc::now().max(floor),
                mono_at_last: StdDuration::ZERO,
            }),
        }
    }
}

impl Clock for SystemClock {
    fn wall(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn now(&self) -> DateTime<Utc> {
        let mono = self.origin.elapsed();
        let wall = Utc::now();
        self.guard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next(wall, mono)
    }
}

#[derive(Debug)]
struct Manual {
    wall: DateTime<Utc>,
    mono: StdDuration,
    guard: Guard,
}

/// A clock that only moves when told to. Used by the test harness and the benchmarks.
///
/// [`ManualClock::advance`] moves real time forward (wall and monotonic); [`ManualClock::set_wall`]
/// steps only the wall clock, as an NTP correction would.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Manual>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(Manual {
            wall: start,
            mono: StdDuration::ZERO,
            guard: Guard {
                last: start,
                mono_at_last: StdDuration::ZERO,
            },
        })))
    }

    /// Lets `by` pass.
    pub fn advance(&self, by: Duration) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.wall += by;
        m.mono += by.to_std().unwrap_or_default();
    }

    /// Steps the wall clock to `to` (forwards or backwards) without time passing.
    pub fn set_wall(&self, to: DateTime<Utc>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).wall = to;
    }
}

impl Clock for ManualClock {
    fn wall(&self) -> DateTime<Utc> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).wall
    }

    fn now(&self) -> DateTime<Utc> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (wall, mono) = (m.wall, m.mono);
        m.guard.next(wall, mono)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_backward_step_does_not_stop_time() {
        let clock = ManualClock::new(t("2026-01-01T12:00:00Z"));
        assert_eq!(clock.now(), t("2026-01-01T12:00:00Z"));
        clock.set_wall(t("2026-01-01T10:00:00Z"));
        assert_eq!(clock.now(), t("2026-01-01T12:00:00Z"), "never backwards");
        clock.advance(Duration::minutes(30));
        assert_eq!(
            clock.now(),
            t("2026-01-01T12:30:00Z"),
            "time keeps flowing at the real rate after the step"
        );
    }

    #[test]
    fn a_forward_step_is_taken() {
        let clock = ManualClock::new(t("2026-01-01T12:00:00Z"));
        clock.set_wall(t("2026-01-01T15:00:00Z"));
        assert_eq!(clock.now(), t("2026-01-01T15:00:00Z"));
        clock.advance(Duration::minutes(1));
        assert_eq!(clock.now(), t("2026-01-01T15:01:00Z"));
    }

    #[test]
    fn a_floor_holds_the_clock_up_and_the_wall_stays_the_wall() {
        let floor = Utc::now() + Duration::hours(1);
        let clock = SystemClock::floored(floor);
        assert!(clock.now() >= floor, "never before the recorded time");
        assert!((clock.wall() - Utc::now()).num_seconds().abs() < 5);
        let past = SystemClock::floored(Utc::now() - Duration::hours(1));
        assert!((past.now() - Utc::now()).num_seconds().abs() < 5);
    }

    #[test]
    fn a_corrected_forward_jump_leaves_the_wall_reading_correct() {
        let clock = ManualClock::new(t("2026-01-01T12:00:00Z"));
        clock.set_wall(t("2026-01-01T13:00:00Z"));
        assert_eq!(clock.now(), t("2026-01-01T13:00:00Z"));
        clock.set_wall(t("2026-01-01T12:00:00Z"));
        assert_eq!(clock.now(), t("2026-01-01T13:00:00Z"), "never backwards");
        assert_eq!(clock.wall(), t("2026-01-01T12:00:00Z"));
    }

    #[test]
    fn system_clock_is_close_to_utc_and_monotonic() {
        let clock = SystemClock::default();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
        assert!((Utc::now() - a).num_seconds().abs() < 5);
    }
}
