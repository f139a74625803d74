//! End-to-end tests: one binary, one link step. Each module drives real
//! clients (psql, ssh, dig, minisign, the tunnel-lite and appliance CLIs)
//! against real servers started by the fixtures in `tests/support`.

mod approvals;
mod audit;
mod bundles;
mod cli;
mod dns;
mod http;
mod login;
mod pg_controls;
mod pg_masking;
mod postgres;
mod spare;
mod ssh;
mod tunnel;
