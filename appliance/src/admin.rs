//! The admin listener: a separate plain-HTTP port (`admin_listen` in the
//! runtime config; off unless set, and meant for loopback or a management
//! network) serving
//!
//! - `GET /metrics`: Prometheus text format (see [`metrics`]);
//! - `GET /healthz`: 200 while the process serves;
//! - `GET /readyz`: 200 when a policy is in force and the audit writer
//!   accepts records with room in its queue, else 503 with the reason.
//!
//! It never exposes audit content, tokens or secrets, and takes no input
//! beyond the request line.

pub mod listener;
pub mod metrics;
pub mod tasks;

pub use listener::serve;
pub use metrics::{render, Metrics, Snapshot};
