//! `diode-chat` as a library: the approval engine and its chat drivers, so that the binary and the
//! tests run the same code (the tests with a clock they control).
#![forbid(unsafe_code)]

pub mod approval;
pub mod audit_forward;
pub mod audit_ship;
pub mod breakglass;
pub mod clock;
pub mod config;
pub mod console;
pub mod emit;
pub mod inbox;
pub mod pipeline;
pub mod pipeline_client;
pub mod policy;
pub mod rate_limit;
pub mod refusal_limit;
pub mod returned;
pub mod reverse;
pub mod secret;
pub mod server;
pub mod slack;
pub mod store;
pub mod teams;
pub mod teams_bot;
pub mod teams_cards;
