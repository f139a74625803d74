//! The access appliance: tunnel endpoint, identity, signed policy, protocol
//! proxies and audit. The binary (`main.rs`) is a thin CLI over this library;
//! tests run the same code in-process.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod approvals;
pub mod audit;
pub mod config;
pub mod events;
pub mod gate;
pub mod identity;
pub mod policy;
pub mod proxy;
pub mod secrets;
pub mod server;
pub mod sessions;
pub mod tls;
