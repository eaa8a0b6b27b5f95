//! jit's pure core, kept apart from the I/O so it builds in seconds (for the fuzzers) and stays
//! honest: the policy and its evaluation, the `/jit` grammar, durations and identifiers, the
//! request state machine, Slack's payloads, and Slack's request signatures.

pub mod clock;
pub mod domain;

/// What Slack sends, parsed, and how its signature is checked; Slack's Block Kit limits; the
/// app's scopes.
pub mod slack {
    pub mod limits;
    pub mod payload;
    pub mod scopes;
    pub mod verify;
}
