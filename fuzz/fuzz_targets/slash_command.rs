//! `/jit` slash-command text: never panics; requests carry a non-empty, trimmed justification;
//! a scheduled start (`at …`) resolves in any time zone without panicking; every error has a
//! message for the person who typed it.
#![no_main]

use chrono::TimeZone;
use jit_core::domain::command::{Command, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match parse(text) {
        Ok(Command::Request {
            justification,
            start,
            ..
        }) => {
            if let Some(start) = start {
                let now = chrono::Utc.with_ymd_and_hms(2026, 11, 23, 14, 0, 0).unwrap();
                for tz in [-86_399, -28_800, 0, 19_800, 86_399] {
                    let _ = start.resolve(now, tz);
                }
            }
            assert!(
                !justification.is_empty(),
                "empty justification from {text:?}"
            );
            assert_eq!(
                justification.trim(),
                justification,
                "untrimmed justification from {text:?}"
            );
        }
        Ok(_) => {}
        Err(e) => {
            assert!(
                !e.user_message().is_empty(),
                "empty error message for {text:?}"
            );
            let _ = e.subcommand();
        }
    }
});
