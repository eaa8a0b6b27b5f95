pub use jit_core::slack::{payload, verify};

pub mod api;
pub mod blocks;
pub mod commands;
pub mod deliveries;
pub mod directory;
pub mod driver;
pub mod events;
pub mod home;
pub mod interactions;
pub mod limits;
pub mod simulator;
pub mod socket;
pub mod text;
pub mod views;
