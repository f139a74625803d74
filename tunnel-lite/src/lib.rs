//! tunnel-lite: the laptop side. Its library also holds the tunnel wire
//! protocol (`wire`) that both tunnel-lite and the appliance speak, and the
//! small HTTP(S) client both use for their APIs.
// No unsafe code; the benchmark-only counting allocator is the one exception,
// and only in builds with its feature.
#![cfg_attr(not(feature = "count-alloc"), forbid(unsafe_code))]
#![cfg_attr(feature = "count-alloc", deny(unsafe_code))]

pub mod addr;
#[cfg(feature = "count-alloc")]
#[allow(unsafe_code)]
pub mod alloc_count;
pub mod api;
pub mod client;
pub mod daemon;
pub mod dns;
pub mod dns_setup;
pub mod http;
pub mod logging;
pub mod login;
pub mod pgrefusal;
pub mod relay;
pub mod spare;
pub mod state;
pub mod tls;
pub mod wire;
