//! jit: just-in-time privileged access, requested and approved in Slack.

pub mod clock;
pub mod crypto;
pub mod domain;
pub mod providers;
pub mod slack;
pub mod store;
