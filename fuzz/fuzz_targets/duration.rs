//! Grant durations: never panics; accepted values are positive, within the parseable maximum,
//! and their canonical form parses back to the same value.
#![no_main]

use jit_core::domain::duration::{GrantDuration, MAX_PARSEABLE_SECS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(d) = GrantDuration::parse(text) {
        assert!(d.as_secs() > 0, "{text:?} parsed to zero");
        assert!(
            d.as_secs() <= MAX_PARSEABLE_SECS,
            "{text:?} parsed to {} s, above the maximum",
            d.as_secs()
        );
        let canonical = d.to_string();
        assert_eq!(
            GrantDuration::parse(&canonical),
            Ok(d),
            "{text:?} -> {canonical:?} does not round-trip"
        );
        assert!(!d.humanize().is_empty());
        assert!(d.half().as_secs() > 0);
    }
});
