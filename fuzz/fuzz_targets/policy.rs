//! Policy text: never panics; every error points at a real position (1-based line and column).
#![no_main]

use jit_core::domain::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match Policy::parse(text, &|_| Err(std::io::Error::other("no files"))) {
        Ok(policy) => {
            for resource in policy.resources() {
                let id = resource.id.as_str();
                assert!(policy.resource(id).is_some());
                assert!(resource.default_duration <= resource.max_duration);
                let _ = policy.suggest(id);
            }
        }
        Err(e) => {
            assert!(e.line >= 1 && e.column >= 1, "{e:?} for {text:?}");
            assert!(!e.to_string().is_empty());
        }
    }
});
