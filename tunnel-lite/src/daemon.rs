//! `tunnel-lite up`: the foreground daemon. It asks the appliance which
//! connections this person may reach, answers DNS for `<name>.<suffix>`,
//! listens on each connection's loopback address and ports, and forwards
//! every accepted connection through its own TLS stream. It re-reads the
//! list periodically (policy changes) and the state file (a new login).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken as CancelToken;

use crate::api::ConnectionsResponse;
use crate::client::{ApplianceClient, ClientError};
use crate::dns::DnsTable;
use crate::relay::Relay;
use crate::state::{State, StateError};
use crate::wire::Status;

/// Options of `tunnel-lite up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub config_dir: PathBuf,
    /// Where the DNS responder listens (UDP and TCP); `None` disables it.
    pub dns_listen: Option<SocketAddr>,
    /// How often the connection list is re-read.
    pub refresh_every: Duration,
    /// Keep a spare tunnel connection handshaken after each open (`crate::spare`).
    pub spare: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot listen for DNS on {addr}: {source}{}", low_port_hint(.addr.port(), .source))]
    DnsBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Login(String),
}

fn low_port_hint(port: u16, e: &std::io::Error) -> &'static str {
    if port < 1024 && e.kind() == std::io::ErrorKind::PermissionDenied {
        " (ports below 1024 need the cap_net_bind_service capability: run `sudo tunnel-lite dns-setup --apply` once, or pick another port with --dns-listen)"
    } else {
        ""
    }
}

/// A running daemon (in-process form, used by the CLI and by tests).
pub struct Running {
    pub dns_addr: Option<SocketAddr>,
    shutdown: CancelToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Runs until Ctrl-C or SIGTERM.
    pub async fn wait_for_signal(self) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        self.stop().await;
    }
}

struct Ctx {
    client: ApplianceClient,
    token: RwLock<String>,
    refresh_now: Notify,
}

impl Ctx {
    fn token(&self) -> String {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Fetches the connection list once (so a bad token fails fast), binds DNS,
/// then runs the listeners and the refresh loop in the background.
pub async fn start(opts: UpOptions) -> Result<Running, UpError> {
    let state = State::load(&opts.config_dir)?;
    let mut client = ApplianceClient::new(
        &state.appliance,
        &state.trust.to_trust().map_err(ClientError::from)?,
    )?;
    if opts.spare {
        client = client.with_spare();
    }
    let list = match client.connections(&state.session_token).await {
        Ok(l) => l,
        Err(e) if e.needs_login() => {
            return Err(UpError::Login(format!(
                "{e}; run `tunnel-lite login` again"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let (table_tx, table_rx) = watch::channel(DnsTable::default());
    let mut dns_addr = None;
    let shutdown = CancelToken::new();
    let mut background = Vec::new();
    if let Some(listen) = opts.dns_listen {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| UpError::DnsBind {
                addr: listen,
                source: e,
            })?;
        let bound = udp.local_addr().map_err(|e| UpError::DnsBind {
            addr: listen,
            source: e,
        })?;
        // TCP on the same port as UDP (resolvers retry truncated answers over TCP).
        let tcp = TcpListener::bind(bound)
            .await
            .map_err(|e| UpError::DnsBind {
                addr: bound,
                source: e,
            })?;
        dns_addr = Some(bound);
        tracing::info!(%bound, "DNS responder listening");
        background.push(tokio::spawn(log_exit(
            "DNS over UDP",
            crate::dns::serve_udp(udp, table_rx.clone()),
        )));
        background.push(tokio::spawn(log_exit(
            "DNS over TCP",
            crate::dns::serve_tcp(tcp, table_rx),
        )));
    }
    let ctx = Arc::new(Ctx {
        client,
        token: RwLock::new(state.session_token.clone()),
        refresh_now: Notify::new(),
    });
    let mut listeners = Listeners::default();
    listeners.reconcile(&list, &table_tx, &ctx, &shutdown).await;
    save_list(&opts.config_dir, &list);
    let task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            refresh_loop(opts, ctx, listeners, table_tx, shutdown.clone()).await;
            for t in background {
                t.abort();
            }
        })
    };
    Ok(Running {
        dns_addr,
        shutdown,
        task,
    })
}

async fn log_exit(what: &'static str, fut: impl std::future::Future<Output = std::io::Result<()>>) {
    if let Err(e) = fut.await {
        tracing::error!(error = %e, "{what} stopped");
    }
}

fn save_list(dir: &std::path::Path, list: &ConnectionsResponse) {
    if let Ok(mut s) = State::load(dir) {
        s.connections = list.connections.clone();
        s.dns_suffix = Some(list.dns_suffix.clone());
        if let Err(e) = s.save(dir) {
            tracing::debug!(error = %e, "could not cache the connection list");
        }
    }
}

async fn refresh_loop(
    opts: UpOptions,
    ctx: Arc<Ctx>,
    mut listeners: Listeners,
    table_tx: watch::Sender<DnsTable>,
    shutdown: CancelToken,
) {
    let mut last_problem: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(opts.refresh_every) => {}
            _ = ctx.refresh_now.notified() => {}
            _ = shutdown.cancelled() => break,
        }
        // A `tunnel-lite login` while we run replaces the token.
        if let Ok(state) = State::load(&opts.config_dir) {
            let mut t = ctx.token.write().unwrap_or_else(|e| e.into_inner());
            if *t != state.session_token {
                tracing::info!(user = %state.user, "picked up a new session token");
                *t = state.session_token;
            }
        }
        let token = ctx.token();
        match ctx.client.connections(&token).await {
            Ok(list) => {
                if last_problem.take().is_some() {
                    tracing::info!("the appliance answers again");
                }
                listeners.reconcile(&list, &table_tx, &ctx, &shutdown).await;
                save_list(&opts.config_dir, &list);
            }
            Err(e) => {
                let msg = if e.needs_login() {
                    format!("{e}; run `tunnel-lite login` again")
                } else {
                    e.to_string()
                };
                if last_problem.as_deref() != Some(msg.as_str()) {
                    tracing::error!("{msg}");
                    last_problem = Some(msg);
                }
            }
        }
    }
    listeners.close_all();
}

/// The loopback listeners, by (connection, port).
#[derive(Default)]
struct Listeners {
    running: HashMap<(String, u16), CancelToken>,
    /// Binds that failed, so each failure is reported once, not every refresh.
    failed: BTreeSet<(String, u16)>,
}

impl Listeners {
    async fn reconcile(
        &mut self,
        list: &ConnectionsResponse,
        table_tx: &watch::Sender<DnsTable>,
        ctx: &Arc<Ctx>,
        shutdown: &CancelToken,
    ) {
        let names: Vec<String> = list.connections.iter().map(|c| c.name.clone()).collect();
        let addrs = crate::addr::assign(&names);
        table_tx.send_replace(DnsTable {
            suffix: list.dns_suffix.clone(),
            names: addrs.clone(),
        });
        // (connection, port) -> (address, speaks PostgreSQL)
        let mut wanted: BTreeMap<(String, u16), (Ipv4Addr, bool)> = BTreeMap::new();
        for c in &list.connections {
            if let Some(ip) = addrs.get(&c.name.to_ascii_lowercase()) {
                for &p in &c.ports {
                    wanted.insert((c.name.clone(), p), (*ip, c.kind == "postgres"));
                }
            }
        }
        self.running.retain(|key, cancel| {
            let keep = wanted.contains_key(key);
            if !keep {
                tracing::info!(connection = %key.0, port = key.1, "no longer allowed; listener closed");
                cancel.cancel();
            }
            keep
        });
        self.failed.retain(|k| wanted.contains_key(k));
        for ((name, port), (ip, postgres)) in wanted {
            let key = (name.clone(), port);
            if self.running.contains_key(&key) {
                continue;
            }
            let at = SocketAddr::from((ip, port));
            match TcpListener::bind(at).await {
                Ok(listener) => {
                    tracing::info!(%at, "{name}.{}:{port} ready", list.dns_suffix);
                    self.failed.remove(&key);
                    let cancel = shutdown.child_token();
                    tokio::spawn(accept_loop(
                        listener,
                        name.clone(),
                        port,
                        postgres,
                        ctx.clone(),
                        cancel.clone(),
                    ));
                    self.running.insert(key, cancel);
                }
                Err(e) => {
                    if self.failed.insert(key) {
                        tracing::error!(
                            "cannot listen on {at} for {name}.{}: {e}{}",
                            list.dns_suffix,
                            low_port_hint(port, &e)
                        );
                    }
                }
            }
        }
    }

    fn close_all(&mut self) {
        for (_, c) in self.running.drain() {
            c.cancel();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    name: String,
    port: u16,
    postgres: bool,
    ctx: Arc<Ctx>,
    cancel: CancelToken,
) {
    loop {
        let (client, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let ctx = ctx.clone();
        let name = name.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            forward(client, peer, &name, port, postgres, &ctx, &cancel).await;
        });
    }
}

async fn forward(
    mut client: TcpStream,
    peer: SocketAddr,
    name: &str,
    port: u16,
    postgres: bool,
    ctx: &Ctx,
    cancel: &CancelToken,
) {
    let _ = client.set_nodelay(true);
    let token = ctx.token();
    // Boxed: opening holds several kilobytes of state (TLS handshake, header
    // exchange) that an open session must not carry (see `future_sizes`).
    let mut tunnel = match Box::pin(ctx.client.open_tunnel(&token, name, port)).await {
        Ok(t) => t,
        Err(e) => {
            let hint = if e.needs_login() || e.status() == Some(Status::IdentityRevoked) {
                " (run `tunnel-lite login` again)"
            } else {
                ""
            };
            tracing::error!("{name}:{port} from {peer}: {e}{hint}");
            if matches!(e.status(), Some(Status::UnknownTarget | Status::NotAllowed)) {
                ctx.refresh_now.notify_one();
            }
            if postgres {
                // psql and drivers show this to the person instead of "connection closed".
                let sqlstate = match e.status() {
                    Some(Status::UpstreamUnreachable) => "08001",
                    Some(_) => "28000",
                    None => "08006",
                };
                let _ =
                    crate::pgrefusal::refuse(&mut client, sqlstate, &format!("{e}{hint}")).await;
            }
            return;
        }
    };
    let mut relay = Relay::new(&mut client, &mut tunnel);
    tokio::select! {
        r = &mut relay => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "{name}:{port} connection ended with an error");
            }
        }
        _ = cancel.cancelled() => {}
    }
}

#[cfg(test)]
mod future_sizes {
    //! Every local connection is a spawned `forward` task, allocated at the
    //! size of its future's largest state for the whole session: opening the
    //! tunnel (connect, handshake, spare, retry) is boxed so an idle session
    //! does not carry that state (unboxed, the future is 11.6 KB in a debug
    //! build; boxed, 2.7 KB).
    fn size7<A, B, C, D, E, G, H, F>(_: impl Fn(A, B, C, D, E, G, H) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn forward_task_stays_small() {
        let task = size7(super::forward);
        assert!(task < 4 * 1024, "forward future is {task} bytes");
    }
}
