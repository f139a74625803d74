//! tunnel-lite: the laptop side. Its library also holds the tunnel wire
//! protocol (`wire`) that both tunnel-lite and the appliance speak, and the
//! small HTTP(S) client both use for their APIs.
#![forbid(unsafe_code)]

pub mod addr;
pub mod api;
pub mod client;
pub mod daemon;
pub mod dns;
pub mod dns_setup;
pub mod http;
pub mod login;
pub mod pgrefusal;
pub mod relay;
pub mod state;
pub mod tls;
pub mod wire;
