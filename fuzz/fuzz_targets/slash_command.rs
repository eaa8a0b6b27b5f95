//! `/jit` slash-command text: never panics; requests carry a non-empty, trimmed justification;
//! every error has a message for the person who typed it.
#![no_main]

use jit_core::domain::command::{Command, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match parse(text) {
        Ok(Command::Request { justification, .. }) => {
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
