//! The laptop side: russh server callbacks for one tunnel stream. The person
//! was identified by the tunnel, so SSH authentication accepts `none` and any
//! key (the client's user name is ignored). Each channel gets a lane and a
//! bridge task; requests are decided here (pure functions in `controls`),
//! answered at once, and queued in order for the bridge.

use std::collections::HashMap;
use std::sync::Arc;

use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, Pty, Sig};

use super::bridge;
use super::controls;
use super::lane::{self, FrontEvent, LaneTx, Start};
use super::Conn;
use crate::audit::AuditKind;

/// Channels one connection may have open at once.
pub const MAX_CHANNELS: usize = 64;

/// russh server handler of one connection.
pub struct Front {
    conn: Arc<Conn>,
    lanes: HashMap<ChannelId, LaneTx>,
}

impl Front {
    pub fn new(conn: Arc<Conn>) -> Front {
        Front {
            conn,
            lanes: HashMap::new(),
        }
    }

    /// Queues `ev` for `channel`; an error only when the session is being killed.
    async fn push(&self, channel: ChannelId, ev: FrontEvent) -> Result<(), russh::Error> {
        match self.lanes.get(&channel) {
            Some(lane) => lane.push(ev).await.map_err(|_| russh::Error::Disconnect),
            None => Ok(()),
        }
    }

    fn new_lane(&mut self, id: ChannelId) -> lane::LaneRx {
        let (tx, rx) = lane::lane(self.conn.pressure.clone(), self.conn.kill.clone());
        self.lanes.insert(id, tx);
        rx
    }
}

impl server::Handler for Front {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.lanes.len() >= MAX_CHANNELS {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let id = channel.id();
        // Requests and data arrive through the callbacks below; the read
        // half is dropped so russh never waits on it.
        let (_read, write) = channel.split();
        let rx = self.new_lane(id);
        reply.accept().await;
        let conn = self.conn.clone();
        let handle = session.handle();
        self.conn
            .spawn(bridge::session_channel(conn, id, write, handle, rx));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let s = &self.conn.settings;
        let refusal = if !s.allow_port_forwarding {
            Some("port forwarding is not allowed on this connection".to_string())
        } else if !controls::forward_allowed(&s.forward_destinations, host, port) {
            Some(format!("forwarding to {host}:{port} is not allowed"))
        } else {
            None
        };
        if let Some(reason) = refusal {
            tracing::info!(session = %self.conn.session_id, host, port, %reason, "ssh forwarding refused");
            let rec = self
                .conn
                .audit(AuditKind::SshForward)
                .outcome("refused")
                .reason(reason)
                .detail(serde_json::json!({ "host": host, "port": port, "originator": format!("{originator_address}:{originator_port}") }));
            self.conn.record(rec).await;
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        if self.lanes.len() >= MAX_CHANNELS {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let id = channel.id();
        let (_read, write) = channel.split();
        let rx = self.new_lane(id);
        let target = bridge::Forward {
            host: host.to_string(),
            port,
            originator: originator_address.to_string(),
            originator_port,
        };
        let conn = self.conn.clone();
        self.conn
            .spawn(bridge::forward_channel(conn, write, reply, target, rx));
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let bytes = bytes::Bytes::copy_from_slice(data);
        self.push(channel, FrontEvent::Data(bytes)).await
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        code: u32,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let bytes = bytes::Bytes::copy_from_slice(data);
        self.push(channel, FrontEvent::ExtData(code, bytes)).await
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.push(channel, FrontEvent::Eof).await
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let r = self.push(channel, FrontEvent::Close).await;
        self.lanes.remove(&channel);
        r
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        pix_w: u32,
        pix_h: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ev = FrontEvent::Pty {
            term: term.chars().take(64).collect(),
            cols,
            rows,
            pix_w,
            pix_h,
            modes: modes.to_vec(),
        };
        self.push(channel, ev).await?;
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if controls::env_allowed(&self.conn.settings.allow_env, name) && value.len() <= 4096 {
            let ev = FrontEvent::Env {
                name: name.to_string(),
                value: value.to_string(),
            };
            self.push(channel, ev).await?;
            session.channel_success(channel)
        } else {
            tracing::debug!(session = %self.conn.session_id, name, "environment variable not allowed");
            session.channel_failure(channel)
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.push(channel, FrontEvent::Start(Start::Shell)).await?;
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data);
        let ev = match controls::denied_command(&self.conn.settings.deny_commands, &command) {
            Some(pattern) => FrontEvent::Denied {
                command: command.into_owned(),
                pattern: pattern.to_string(),
            },
            None => match controls::denied_command(&self.conn.settings.hold_commands, &command) {
                Some(pattern) => FrontEvent::Held {
                    command: data.to_vec(),
                    pattern: pattern.to_string(),
                },
                None => FrontEvent::Start(Start::Exec(data.to_vec())),
            },
        };
        self.push(channel, ev).await?;
        // Success either way: a denied command then reports on stderr and
        // exits 126, which is what scripts check.
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.push(
            channel,
            FrontEvent::Start(Start::Subsystem(name.to_string())),
        )
        .await?;
        session.channel_success(channel)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        pix_w: u32,
        pix_h: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ev = FrontEvent::WindowChange {
            cols,
            rows,
            pix_w,
            pix_h,
        };
        self.push(channel, ev).await
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.push(channel, FrontEvent::Signal(signal)).await
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }
}
