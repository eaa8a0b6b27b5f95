//! jit: just-in-time privileged access, requested and approved in Slack.

pub mod app;
pub mod audit;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod handlers;
pub mod metrics;
pub mod providers;
pub mod queue;
pub mod slack;
pub mod store;
