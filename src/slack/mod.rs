pub use jit_core::slack::{limits, payload, verify};
/// The Slack simulator: a stateful fake of Slack's Web API for tests, the demo and the benchmarks
/// (its own crate, `crates/slack-sim`).
pub use slack_sim as simulator;

pub mod api;
pub mod blocks;
pub mod commands;
pub mod deliveries;
pub mod directory;
pub mod driver;
pub mod events;
pub mod home;
pub mod interactions;
pub mod socket;
pub mod text;
pub mod views;
