//! The pure core: identifiers, durations, the policy and its evaluation, the slash-command
//! grammar and the request state machine. Nothing in here performs I/O or reads the clock;
//! callers pass the current time in.

pub mod command;
pub mod duration;
pub mod ids;
pub mod policy;
pub mod request;
pub mod start;
