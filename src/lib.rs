//! jit: just-in-time privileged access, requested and approved in Slack.

pub use jit_core::{clock, domain};

pub mod api;
pub mod app;
pub mod audit;
pub mod bench;
pub mod bootstrap;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod doctor;
pub mod edge;
pub mod handlers;
pub mod jobs;
pub mod logging;
pub mod metrics;
pub mod oncall;
pub mod providers;
pub mod queue;
pub mod serve;
pub mod server;
pub mod slack;
pub mod store;
pub mod webhooks;
