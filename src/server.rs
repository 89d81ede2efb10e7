//! Start-up: binds every configured listener (failing loudly, naming the entry), then serves
//! until SIGINT/SIGTERM.

use crate::config::{Config, TransportKind};
use crate::core::Core;
use crate::engine::{Engine, EngineParams, Stats};
use crate::metrics::Metrics;
use crate::routing::dns::Resolver;
use crate::transport::{socket, tcp, udp};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Validated messages queued for the engine; past this the transports shed load (counted).
const ENGINE_QUEUE: usize = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listen[{index}] ({transport:?} {addr}): cannot bind: {source}")]
    Bind { index: usize, transport: TransportKind, addr: SocketAddr, source: std::io::Error },
    #[error("state.dir {path}: {reason}")]
    State { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] crate::registrar::store::StoreError),
    #[error("metrics.listen {addr}: cannot bind: {source}")]
    Metrics { addr: SocketAddr, source: std::io::Error },
    #[error("media: cannot start the RTP relay: {0}")]
    Relay(#[from] sixgate_relay::Error),
    #[error("control socket {path}: {source}")]
    Ctl { path: String, source: std::io::Error },
}

/// A running sixgate: its listeners are bound; dropping the handle stops nothing, `shutdown` does.
pub struct Server {
    pub core: Arc<Core>,
    pub tcp_table: Arc<tcp::ConnectionTable>,
    pub bound: Vec<(TransportKind, SocketAddr)>,
    /// The engine's counters, refreshed by the driver about once a second.
    pub engine_stats: Arc<Mutex<Stats>>,
    pub store_counters: Arc<crate::driver::StoreCounters>,
    /// The RTP relay (`[media]`), unless media is never relayed.
    pub relay: Option<Arc<sixgate_relay::Relay>>,
    relay_events: Arc<RelayEventCounters>,
    /// Where `GET /metrics` is served (`[metrics] listen`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// The control socket (`sixgate ctl`).
    pub ctl_path: std::path::PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Binds all listeners and spawns their tasks on the current tokio runtime.
    pub async fn start(cfg: &Config) -> Result<Server, StartError> {
        Server::start_from(cfg, None).await
    }

    /// [`Server::start`] with the file `cfg` was read from: `sixgate ctl reload` and SIGHUP
    /// re-read it.
    pub async fn start_from(cfg: &Config, file: Option<std::path::PathBuf>) -> Result<Server, StartError> {
        // Durable state first: a store that cannot be opened must stop the start, before any
        // phone is told 200.
        let nonce_key = nonce_key(&cfg.state_dir)?;
        use crate::registrar::store::{BindingStore, LogStore, RedbStore};
        let mut store: Box<dyn BindingStore> = match cfg.store {
            crate::config::StoreKind::Log => Box::new(LogStore::open(&cfg.state_dir.join("bindings.log"))?),
            crate::config::StoreKind::Redb => Box::new(RedbStore::open(&cfg.state_dir.join("bindings.redb"))?),
        };
        let (stored, unreadable) = store.load()?;
        if unreadable > 0 {
            tracing::warn!(unreadable, "registration store: records skipped that could not be read");
        }
        tracing::info!(bindings = stored.len(), dir = %cfg.state_dir.display(), "registration store loaded");
        // The relay binds no port until a call needs one; starting it checks the config and the
        // engine (io_uring, else epoll) before the first call.
        let relay_events = Arc::new(RelayEventCounters::default());
        let mut relay = None;
        let mut relay_stream = None;
        if let Some(rc) = crate::media::relay_config(&cfg.media) {
            let (r, events) = sixgate_relay::Relay::start(rc)?;
            tracing::info!(engine = ?r.engine(), v6 = ?cfg.media.ipv6, v4 = ?cfg.media.ipv4, "RTP relay started");
            relay_stream = Some(events);
            relay = Some(Arc::new(r));
        }
        let metrics = Arc::new(Metrics::default());
        let core = Arc::new(Core::new(cfg, metrics));
        let tcp_table = Arc::new(tcp::ConnectionTable::default());
        let mut tasks = Vec::new();
        let mut bound = Vec::new();
        let (to_engine, messages) = tokio::sync::mpsc::channel(ENGINE_QUEUE);
        let mut udp_sockets = HashMap::new();
        for (index, l) in cfg.listen.iter().enumerate() {
            let err = |source| StartError::Bind { index, transport: l.transport, addr: l.addr, source };
            match l.transport {
                TransportKind::Udp => {
                    let sock = socket::udp(l.addr).map_err(err)?;
                    let sock = tokio::net::UdpSocket::from_std(sock).map_err(err)?;
                    let local = sock.local_addr().map_err(err)?;
                    tracing::info!(%local, "listening on udp");
                    bound.push((l.transport, local));
                    let sock = Arc::new(sock);
                    udp_sockets.insert(local, crate::driver::UdpOut::new(sock.clone()));
                    tasks.push(tokio::spawn(udp::serve(sock, local, core.clone(), cfg.limits.max_message_bytes, to_engine.clone())));
                }
                TransportKind::Tcp => {
                    let lst = socket::tcp_listener(l.addr).map_err(err)?;
                    let lst = tokio::net::TcpListener::from_std(lst).map_err(err)?;
                    let local = lst.local_addr().map_err(err)?;
                    tracing::info!(%local, "listening on tcp");
                    bound.push((l.transport, local));
                    tasks.push(tokio::spawn(tcp::serve(lst, local, core.clone(), tcp_table.clone(), cfg.limits.clone(), to_engine.clone())));
                }
            }
        }
        // The engine sees the ports actually bound (port 0 in a config means "any").
        let mut cfg = cfg.clone();
        for (l, (_, addr)) in cfg.listen.iter_mut().zip(&bound) {
            l.addr = *addr;
        }
        let resolver = match Resolver::new(&cfg.dns.servers) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver: carriers must be given as IP addresses");
                None
            }
        };
        let (seed, _) = random_seed();
        let unix_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut engine = Engine::new(&cfg, EngineParams { seed, nonce_key, unix_time });
        engine.load_bindings(std::time::Instant::now(), stored);
        let engine_stats = Arc::new(Mutex::new(Stats::default()));
        let store_counters = Arc::new(crate::driver::StoreCounters::default());
        let (store_queue, started) = crate::driver::start_store(store, store_counters.clone());
        if let Some(events) = relay_stream {
            drain_relay_events(events, relay_events.clone(), started.media_sink());
        }
        let io = crate::driver::Io {
            udp: udp_sockets,
            tcp_table: tcp_table.clone(),
            core: core.clone(),
            limits: cfg.limits.clone(),
            resolver,
            to_engine,
            stats: engine_stats.clone(),
            store: store_queue,
            relay: relay.clone(),
            records: cfg.call_records.clone().map(|path| crate::driver::spawn_records(path, store_counters.clone())),
            config: cfg.clone(),
            config_file: file,
        };
        let (ctl_tx, ctl_rx) = tokio::sync::mpsc::channel(16);
        tasks.push(tokio::spawn(reload_on_sighup(ctl_tx.clone())));
        tasks.push(tokio::spawn(crate::driver::run(engine, messages, io, started, ctl_rx)));
        let ctl_path = crate::ctl::socket_path(&cfg.state_dir);
        let ctl_listener = bind_ctl(&ctl_path)?;
        let mut server = Server { core, tcp_table, bound, engine_stats, store_counters, relay, relay_events, tasks, metrics_addr: None, ctl_path };
        let source = server.metrics_source();
        server.tasks.push(tokio::spawn(crate::ctl::serve(ctl_listener, ctl_tx, server.relay.clone(), move || source.render())));
        if let Some(addr) = cfg.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Metrics { addr, source })?;
            let bound = listener.local_addr().map_err(|source| StartError::Metrics { addr, source })?;
            tracing::info!(%bound, "Prometheus metrics on http://{bound}/metrics");
            server.metrics_addr = Some(bound);
            let source = server.metrics_source();
            server.tasks.push(tokio::spawn(serve_metrics(listener, source)));
        }
        Ok(server)
    }

    /// Every counter (transports and engine) in Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.metrics_source().render()
    }

    fn metrics_source(&self) -> MetricsSource {
        MetricsSource {
            core: self.core.clone(),
            engine_stats: self.engine_stats.clone(),
            store_counters: self.store_counters.clone(),
            relay: self.relay.clone(),
            relay_events: self.relay_events.clone(),
        }
    }

    pub fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.ctl_path);
    }
}

/// Binds the control socket, mode 0660 (root and the service's group). A socket file left by a
/// process that died is replaced; one that answers means another sixgate runs: refused.
fn bind_ctl(path: &std::path::Path) -> Result<tokio::net::UnixListener, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| StartError::Ctl { path: path.display().to_string(), source };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "another sixgate is running (its control socket answers)")));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    tracing::info!(path = %path.display(), "control socket (sixgate ctl)");
    Ok(listener)
}

/// Everything the counters are read from (cheap to clone: shared handles).
#[derive(Clone)]
struct MetricsSource {
    core: Arc<Core>,
    engine_stats: Arc<Mutex<Stats>>,
    store_counters: Arc<crate::driver::StoreCounters>,
    relay: Option<Arc<sixgate_relay::Relay>>,
    relay_events: Arc<RelayEventCounters>,
}

impl MetricsSource {
    /// Every counter and gauge in the Prometheus text format (0.0.4), with a `# TYPE` line per
    /// family: `_total` names are counters, the others gauges.
    fn render(&self) -> String {
        let mut out = self.core.metrics.render();
        if let Ok(s) = self.engine_stats.lock() {
            out.push_str(&s.render());
        }
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.store_counters;
        out.push_str(&format!("sixgate_store_commits_total {}\n", c.commits.load(Relaxed)));
        out.push_str(&format!("sixgate_store_changes_total {}\n", c.changes.load(Relaxed)));
        out.push_str(&format!("sixgate_store_commit_failures_total {}\n", c.failures.load(Relaxed)));
        out.push_str(&format!("sixgate_call_records_failed_total {}\n", c.record_failures.load(Relaxed)));
        if let Some(r) = &self.relay {
            out.push_str(&format!("sixgate_relay_sessions {}\n", r.session_count()));
            out.push_str(&format!("sixgate_relay_events_dropped_total {}\n", r.events_dropped()));
            let e = &self.relay_events;
            for (kind, n) in [("first_packet", &e.first_packet), ("latched", &e.latched), ("relatched", &e.relatched), ("media_timeout", &e.media_timeout), ("closed", &e.closed)] {
                out.push_str(&format!("sixgate_relay_events_total{{kind=\"{kind}\"}} {}\n", n.load(Relaxed)));
            }
            out.push_str(&format!("sixgate_relay_forwarded_packets_total {}\n", e.forwarded_packets.load(Relaxed)));
            out.push_str(&format!("sixgate_relay_forwarded_bytes_total {}\n", e.forwarded_bytes.load(Relaxed)));
            for (reason, n) in ["strict_source", "no_destination", "truncated", "send_failed"].iter().zip(&e.dropped) {
                out.push_str(&format!("sixgate_relay_dropped_packets_total{{reason=\"{reason}\"}} {}\n", n.load(Relaxed)));
            }
        }
        with_types(&out)
    }
}

/// Adds `# TYPE family counter|gauge` before the first sample of each family.
fn with_types(samples: &str) -> String {
    let mut out = String::with_capacity(samples.len() * 2);
    let mut last = "";
    for line in samples.lines() {
        let family = line.split(['{', ' ']).next().unwrap_or("");
        if family != last {
            let kind = if family.ends_with("_total") { "counter" } else { "gauge" };
            out.push_str(&format!("# TYPE {family} {kind}\n"));
            last = family;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Serves `GET /metrics` on `listener` (HTTP/1.0-style: one request per connection). Anything
/// else gets 404; a request head over 8 KiB or slower than 5 s is dropped.
async fn serve_metrics(listener: tokio::net::TcpListener, source: MetricsSource) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let (status, body) = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?") {
                ("200 OK", source.render())
            } else {
                ("404 Not Found", "not found: try GET /metrics\n".to_string())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// A seed for branches and tags and a key for nonces, from the OS (falling back to the
/// process's hash randomness and the time if /dev/urandom cannot be read).
fn random_seed() -> (u64, [u8; 32]) {
    use std::io::Read;
    let mut key = [0u8; 40];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key)).is_ok();
    if !ok {
        use std::hash::{BuildHasher, Hasher};
        for chunk in key.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
            chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
        }
    }
    let mut nonce_key = [0u8; 32];
    nonce_key.copy_from_slice(&key[8..]);
    (u64::from_le_bytes(key[..8].try_into().unwrap_or([0; 8])), nonce_key)
}

/// Relay events seen, by kind.
#[derive(Default)]
struct RelayEventCounters {
    first_packet: std::sync::atomic::AtomicU64,
    latched: std::sync::atomic::AtomicU64,
    relatched: std::sync::atomic::AtomicU64,
    media_timeout: std::sync::atomic::AtomicU64,
    closed: std::sync::atomic::AtomicU64,
    /// Datagrams (RTP and RTCP) and bytes the relay forwarded, and dropped by reason, added up
    /// when each session closes (the final statistics come with its Closed event).
    forwarded_packets: std::sync::atomic::AtomicU64,
    forwarded_bytes: std::sync::atomic::AtomicU64,
    dropped: [std::sync::atomic::AtomicU64; 4],
}

/// SIGHUP re-reads the config file, as `sixgate ctl reload` does; the outcome is logged.
async fn reload_on_sighup(engine: tokio::sync::mpsc::Sender<crate::ctl::Ask>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP: reload with `sixgate ctl reload`");
        return;
    };
    while hup.recv().await.is_some() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if engine.send(crate::ctl::Ask { request: crate::ctl::Request::Reload { file: None, config: None }, reply: tx }).await.is_err() {
            return;
        }
        if let Ok(crate::ctl::Reply::Error { error }) = rx.await {
            tracing::error!("SIGHUP: {error}");
        }
    }
}

/// Drains the relay's event stream on its own thread (the stream is not `Sync`, so it cannot
/// sit in a tokio task) for as long as the process runs: logs and counts the events, and hands
/// media timeouts to the engine (which ends the call).
fn drain_relay_events(events: sixgate_relay::EventStream, counters: Arc<RelayEventCounters>, engine: crate::driver::MediaSink) {
    use sixgate_relay::Event;
    use std::sync::atomic::Ordering::Relaxed;
    let spawned = std::thread::Builder::new().name("sixgate-relay-events".into()).spawn(move || loop {
        let asked = std::time::Instant::now();
        let Some(e) = events.recv_timeout(std::time::Duration::from_secs(1)) else {
            // A timeout takes the full second; an immediate None means the relay is gone.
            if asked.elapsed() < std::time::Duration::from_millis(500) {
                tracing::warn!("the relay's event stream closed");
                return;
            }
            continue;
        };
        match e {
            Event::FirstPacket { session, leg, from } => {
                engine.first_packet(session, leg, from);
                counters.first_packet.fetch_add(1, Relaxed)
            }
            Event::Latched { session, leg, peer, .. } => {
                tracing::debug!(session = session.0, ?leg, %peer, "relay leg latched");
                counters.latched.fetch_add(1, Relaxed)
            }
            Event::Relatched { session, leg, from, to, .. } => {
                tracing::info!(session = session.0, ?leg, %from, %to, "relay leg re-latched");
                counters.relatched.fetch_add(1, Relaxed)
            }
            Event::MediaTimeout { session, leg } => {
                tracing::info!(session = session.0, ?leg, "relay: no media on a leg (media timeout)");
                engine.media_timeout(session, leg);
                counters.media_timeout.fetch_add(1, Relaxed)
            }
            Event::Closed { session, stats } => {
                engine.closed(session, stats);
                for l in &stats.legs {
                    counters.forwarded_packets.fetch_add(l.tx_rtp.packets + l.tx_rtcp.packets, Relaxed);
                    counters.forwarded_bytes.fetch_add(l.tx_rtp.bytes + l.tx_rtcp.bytes, Relaxed);
                    for (slot, n) in counters.dropped.iter().zip([l.drops.strict_source, l.drops.no_destination, l.drops.truncated, l.drops.send_failed]) {
                        slot.fetch_add(n, Relaxed);
                    }
                }
                let [a, b] = stats.legs;
                tracing::info!(
                    session = session.0,
                    a_rx = a.rx_rtp.packets, a_lost = a.rtp.lost, a_jitter_us = a.rtp.jitter.as_micros() as u64,
                    b_rx = b.rx_rtp.packets, b_lost = b.rtp.lost, b_jitter_us = b.rtp.jitter.as_micros() as u64,
                    "relay session closed"
                );
                counters.closed.fetch_add(1, Relaxed)
            }
        };
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the relay event thread");
    }
}

/// The key of our digest nonces, kept in `state_dir/nonce.key` (created 0600 on first start):
/// nonces stay good across a restart, and a nonce cannot be forged without the file.
fn nonce_key(dir: &std::path::Path) -> Result<[u8; 32], StartError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |e: std::io::Error| StartError::State { path: dir.display().to_string(), reason: e.to_string() };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    let path = dir.join("nonce.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() == 32 => return Ok(k.try_into().unwrap_or([0; 32])),
        Ok(_) => return Err(StartError::State { path: path.display().to_string(), reason: "not 32 bytes (delete it to make a new key)".into() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let (_, key) = random_seed();
    let tmp = dir.join("nonce.key.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(&key).and_then(|_| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(key)
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).unwrap_or(15999)
    }

    fn config(extra: &str, state: &std::path::Path) -> Config {
        Config::from_toml(&format!(
            "[sip]\ndomains = [\"localhost\"]\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1\"\nport = 0\n\
             [state]\ndir = \"{}\"\n{extra}",
            state.display()
        ).replace("port = 0", &format!("port = {}", free_port())))
        .unwrap()
    }

    #[tokio::test]
    async fn the_relay_starts_with_the_server_unless_media_is_never_relayed() {
        let dir = std::env::temp_dir().join(format!("sixgate-server-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Server::start(&config("", &dir.join("a"))).await.unwrap();
        let relay = s.relay.clone().expect("relay started from [media]");
        assert_eq!(relay.session_count(), 0);
        assert!(s.render_metrics().contains("sixgate_relay_sessions 0\n"));
        s.shutdown();
        let s = Server::start(&config("[media]\nrelay = \"never\"\n", &dir.join("b"))).await.unwrap();
        assert!(s.relay.is_none());
        assert!(!s.render_metrics().contains("sixgate_relay_"));
        s.shutdown();
        // A bad range is refused at start, naming the problem.
        let bad = Config::from_toml("[sip]\ndomains = [\"x\"]\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1\"\nport = 0\n[media]\nports_v4 = [40001, 40001]\n");
        assert!(bad.unwrap_err().to_string().contains("media.ports_v4"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn http_get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn prometheus_scrapes_well_formed_text_on_loopback_only() {
        let dir = std::env::temp_dir().join(format!("sixgate-metrics-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = free_port();
        let s = Server::start(&config(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"), &dir)).await.unwrap();
        let addr = s.metrics_addr.expect("metrics listener");
        let reply = http_get(addr, "/metrics").await;
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains("text/plain; version=0.0.4"), "{head}");
        // The text format: a TYPE line before each family's samples, then `name{labels} value`.
        let mut typed = std::collections::HashMap::new();
        let mut samples = 0;
        for line in body.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (family, kind) = t.split_once(' ').unwrap();
                assert!(typed.insert(family.to_string(), kind.to_string()).is_none(), "family typed twice: {family}");
                assert_eq!(kind == "counter", family.ends_with("_total"), "{line}");
                continue;
            }
            let (name_labels, value) = line.rsplit_once(' ').unwrap();
            let family = name_labels.split('{').next().unwrap();
            assert!(family.starts_with("sixgate_") && family.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{line}");
            assert!(typed.contains_key(family), "no TYPE before {line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            if let Some(labels) = name_labels.strip_prefix(family) {
                assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}') && labels.contains("=\"")), "{line}");
            }
            samples += 1;
        }
        assert!(samples > 10 && typed.contains_key("sixgate_relay_sessions") && typed.contains_key("sixgate_store_commits_total"), "{body}");
        assert!(http_get(addr, "/").await.starts_with("HTTP/1.1 404"));
        s.shutdown();
        // Only loopback: the counters say who calls whom.
        let bad = Config::from_toml("[sip]\ndomains = [\"x\"]\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1\"\nport = 5060\n[metrics]\nlisten = \"0.0.0.0:9464\"\n");
        assert!(bad.unwrap_err().to_string().contains("metrics.listen: must be a loopback address"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
