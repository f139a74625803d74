//! The appliance API's request and response bodies, shared by the appliance
//! (which serves them) and tunnel-lite (which calls them). Plain data.

use serde::{Deserialize, Serialize};

use crate::login::DeviceFlowInfo;

/// `POST /v1/login` request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub id_token: String,
}

/// `POST /v1/login` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub session_token: String,
    pub user: String,
    pub groups: Vec<String>,
    pub expires_at: u64,
}

/// One connection a person may reach.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub name: String,
    /// `postgres`, `ssh`, `http` or `tcp`.
    pub kind: String,
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `GET /v1/connections` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionsResponse {
    pub policy_version: u64,
    pub dns_suffix: String,
    pub user: String,
    pub groups: Vec<String>,
    pub token_expires_at: u64,
    pub connections: Vec<ConnectionInfo>,
}

/// `GET /v1/info` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InfoResponse {
    pub policy_version: u64,
    pub dns_suffix: String,
    pub issuer: String,
    pub device_flow: Option<DeviceFlowInfo>,
    /// The appliance's SSH host public keys (`ssh-ed25519 AAAA...`), for known_hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_host_keys: Vec<String>,
}

/// Every error body: a stable code and a sentence for the person.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub reason: String,
}
