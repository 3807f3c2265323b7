//! Slack: request signatures, the Web API, Block Kit messages and the HTTP endpoints for slash
//! commands and interactivity.

pub mod api;
pub mod blocks;
pub mod form;
pub mod home;
pub mod http;
pub mod signature;
pub mod socket;
