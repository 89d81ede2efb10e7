//! The control socket (`sixgate ctl`): a Unix socket in the runtime directory (mode 0660: root
//! and the service's group) where one request line (JSON [`Request`]) gets one JSON answer
//! ([`Reply`]) and the connection closes. The daemon side ([`serve`]) asks the engine's owner
//! task for a snapshot over a channel (the engine is never locked) and adds the relay's live
//! per-stream statistics; the client side ([`query`], [`render`]) prints tables or JSON.
//!
//! Must never: block the engine's task, or let anyone but root and the service group connect.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What `sixgate ctl` asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Registrations { user: Option<String> },
    Calls,
    /// One call, by Call-ID.
    Call { call_id: String },
    /// NAT and SIP ALG findings for one local user's phone.
    Diagnose { user: String },
    Stats,
    /// Re-read the config file (as SIGHUP does), or take `config` (the text of `file`, read by
    /// the caller: root only, so a unit's `ExecReload=+` can pass /etc/sixgate/sixgate.toml to a
    /// service that may not read it).
    Reload {
        #[serde(default)]
        file: Option<String>,
        #[serde(default)]
        config: Option<String>,
    },
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Reply {
    Registrations { registrations: Vec<Registration> },
    Calls { calls: Vec<Call> },
    Stats { counters: Vec<(String, f64)> },
    Diagnosis { user: String, contacts: Vec<String>, findings: Vec<crate::registrar::diagnose::Finding> },
    Reloaded { file: String, applied: Vec<String>, restart_needed: Vec<String> },
    Error { error: String },
}

/// One registered contact.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registration {
    pub aor: String,
    pub contact: String,
    /// The flow its requests go back over.
    pub transport: String,
    pub local: String,
    pub remote: String,
    /// Why sixgate thinks the phone is behind NAT (`None`: it is not).
    pub nat: Option<String>,
    pub expires_in: u64,
    /// Seconds since the flow last showed life (a request, a keepalive answered).
    pub last_seen_ago: Option<u64>,
    pub keepalives_missed: u32,
    pub user_agent: Option<String>,
    pub outbound: bool,
}

/// One side of a call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallLeg {
    pub transport: String,
    pub family: String,
    pub remote: String,
}

/// One relayed stream of a call, with the relay's live counters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stream {
    pub session: u64,
    /// Our relay addresses: caller side, callee side.
    pub caller_side: String,
    pub callee_side: String,
    /// Packets the relay received from each party, lost and jitter of what it received.
    pub from_caller: Option<Direction>,
    pub from_callee: Option<Direction>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Direction {
    pub packets: u64,
    pub lost: i64,
    pub jitter_ms: f64,
    pub dropped: u64,
}

/// One dialog.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Call {
    pub call_id: String,
    /// "early" (a provisional answer made it) or "confirmed".
    pub state: String,
    pub caller: CallLeg,
    pub callee: CallLeg,
    pub user: Option<String>,
    pub carrier: Option<String>,
    pub duration_secs: u64,
    /// Relayed streams (empty: media goes direct).
    pub streams: Vec<Stream>,
    /// Media flows one way only right now: the silent side and the likely cause.
    #[serde(default)]
    pub one_way_audio: Option<OneWayAudio>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OneWayAudio {
    /// "caller" or "callee".
    pub silent: String,
    pub cause: String,
}

/// Where the control socket lives: `$RUNTIME_DIRECTORY/ctl.sock` under systemd
/// (`RuntimeDirectory=sixgate`), else next to the registration store.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    match std::env::var_os("RUNTIME_DIRECTORY") {
        Some(d) => PathBuf::from(d).join("ctl.sock"),
        None => state_dir.join("ctl.sock"),
    }
}

/// Sends `req` to the daemon at `socket` and reads its answer (bounded by a 5 s timeout).
pub fn query(socket: &Path, req: &Request) -> Result<Reply, String> {
    use std::io::{BufRead, Write};
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!("sixgate is not running (no control socket at {})", socket.display())
        }
        std::io::ErrorKind::PermissionDenied => format!("permission denied on {} (root or the sixgate group only)", socket.display()),
        _ => format!("cannot reach sixgate at {}: {e}", socket.display()),
    })?;
    let timeout = Some(std::time::Duration::from_secs(5));
    stream.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    stream.set_write_timeout(timeout).map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(|e| format!("sending to sixgate: {e}"))?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream).read_line(&mut answer).map_err(|e| format!("reading sixgate's answer: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("sixgate's answer is not understood ({e}): {answer}"))
}

/// A reply as a human-readable table.
pub fn render(reply: &Reply) -> String {
    let mut out = String::new();
    match reply {
        Reply::Registrations { registrations } => {
            let rows: Vec<Vec<String>> = registrations
                .iter()
                .map(|r| {
                    vec![
                        r.aor.clone(),
                        r.contact.clone(),
                        format!("{} {} -> {}", r.transport, r.remote, r.local),
                        r.nat.clone().map_or("no".into(), |why| format!("yes: {why}")),
                        r.last_seen_ago.map_or("-".into(), |s| format!("{s} s ago")),
                        format!("{} s", r.expires_in),
                    ]
                })
                .collect();
            table(&mut out, &["AOR", "CONTACT", "FLOW", "NAT", "LAST SEEN", "EXPIRES"], &rows);
        }
        Reply::Calls { calls } => {
            let rows: Vec<Vec<String>> = calls
                .iter()
                .map(|c| {
                    let media = if c.streams.is_empty() {
                        "direct".to_string()
                    } else {
                        c.streams
                            .iter()
                            .map(|s| {
                                let dir = |d: &Option<Direction>| d.as_ref().map_or("-".into(), |d| format!("{} pkts, {} lost, {:.1} ms jitter", d.packets, d.lost, d.jitter_ms));
                                format!("{} | {} (from caller: {}; from callee: {})", s.caller_side, s.callee_side, dir(&s.from_caller), dir(&s.from_callee))
                            })
                            .collect::<Vec<_>>()
                            .join("; ")
                    };
                    let state = match &c.one_way_audio {
                        Some(o) => format!("{} ONE-WAY ({} silent)", c.state, o.silent),
                        None => c.state.clone(),
                    };
                    vec![
                        c.call_id.clone(),
                        state,
                        format!("{} {} {}", c.caller.transport, c.caller.family, c.caller.remote),
                        format!("{} {} {}", c.callee.transport, c.callee.family, c.callee.remote),
                        format!("{} s", c.duration_secs),
                        media,
                    ]
                })
                .collect();
            table(&mut out, &["CALL-ID", "STATE", "CALLER", "CALLEE", "DURATION", "MEDIA (relay caller side | callee side)"], &rows);
            for c in calls {
                if let Some(o) = &c.one_way_audio {
                    out.push_str(&format!("\none-way audio on {}: nothing heard from the {}: {}\n", c.call_id, o.silent, o.cause));
                }
            }
        }
        Reply::Stats { counters } => {
            for (name, v) in counters {
                out.push_str(&format!("{name} {v}\n"));
            }
        }
        Reply::Diagnosis { user, contacts, findings } => {
            out.push_str(&format!("{user}: {}\n", if contacts.is_empty() { "not registered".to_string() } else { format!("registered at {}", contacts.join(", ")) }));
            for f in findings {
                out.push_str(&format!("\n[{}] {}: {}\n    what to do: {}\n", f.level.to_uppercase(), f.topic, f.seen, f.action));
            }
        }
        Reply::Reloaded { file, applied, restart_needed } => {
            out.push_str(&format!("reloaded {file}\n"));
            out.push_str(&format!("applied: {}\n", if applied.is_empty() { "nothing changed".into() } else { applied.join(", ") }));
            if !restart_needed.is_empty() {
                out.push_str(&format!("changed but needs a restart (running values kept): {}\n", restart_needed.join(", ")));
            }
        }
        Reply::Error { error } => out.push_str(&format!("error: {error}\n")),
    }
    out
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<String> = cells.enumerate().map(|(i, c)| format!("{c:<w$}", w = width[i])).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    };
    line(out, &mut header.iter().copied());
    for r in rows {
        line(out, &mut r.iter().map(String::as_str));
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
}

/// The Prometheus exposition as (name with labels, value) pairs, in order.
pub fn counters(exposition: &str) -> Vec<(String, f64)> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            Some((name.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The longest request line (a config handed over by `ctl reload FILE` included).
const MAX_REQUEST: usize = 16 << 20;

/// A snapshot request from the control socket to the engine's owner task.
pub struct Ask {
    pub request: Request,
    pub reply: tokio::sync::oneshot::Sender<Reply>,
}

/// Serves the control socket: each connection sends one request line and gets one answer.
/// Snapshots come from the engine's task (`engine`); relay statistics are added here.
pub async fn serve(listener: tokio::net::UnixListener, engine: tokio::sync::mpsc::Sender<Ask>, relay: Option<std::sync::Arc<sixgate_relay::Relay>>, metrics: impl Fn() -> String + Send + Sync + 'static) {
    let metrics = std::sync::Arc::new(metrics);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let root = stream.peer_cred().is_ok_and(|c| c.uid() == 0);
        let (engine, relay, metrics) = (engine.clone(), relay.clone(), metrics.clone());
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            // One line; a config handed over may be large (many users), anything else is short.
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), tokio::io::AsyncReadExt::take(tokio::io::BufReader::new(rd), MAX_REQUEST as u64 + 1).read_line(&mut line)).await;
            let reply = match (read, serde_json::from_str::<Request>(&line)) {
                (Ok(Ok(n)), _) if n > MAX_REQUEST => Reply::Error { error: "request too long".into() },
                (Ok(Ok(_)), Ok(Request::Stats)) => Reply::Stats { counters: counters(&metrics()) },
                (Ok(Ok(_)), Ok(Request::Reload { config: Some(_), .. })) if !root => Reply::Error { error: "only root may hand sixgate a config (others may `reload` its own file)".into() },
                (Ok(Ok(_)), Ok(request)) => ask(&engine, request, relay.as_deref()).await,
                (Ok(Ok(_)), Err(e)) => Reply::Error { error: format!("bad request: {e}") },
                _ => return,
            };
            let mut text = serde_json::to_string(&reply).unwrap_or_else(|e| format!("{{\"kind\":\"error\",\"error\":\"{e}\"}}"));
            text.push('\n');
            let _ = wr.write_all(text.as_bytes()).await;
        });
    }
}

async fn ask(engine: &tokio::sync::mpsc::Sender<Ask>, request: Request, relay: Option<&sixgate_relay::Relay>) -> Reply {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if engine.send(Ask { request, reply: tx }).await.is_err() {
        return Reply::Error { error: "the engine is gone".into() };
    }
    let Ok(mut reply) = rx.await else { return Reply::Error { error: "the engine did not answer".into() } };
    if let (Reply::Calls { calls }, Some(relay)) = (&mut reply, relay) {
        // Ask every stream's engine thread first, then collect: one round trip in all.
        let tickets: Vec<_> = calls.iter().flat_map(|c| c.streams.iter()).map(|s| relay.stats(sixgate_relay::SessionId(s.session)).ok()).collect();
        let stats: Vec<_> = tokio::task::spawn_blocking(move || tickets.into_iter().map(|t| t.and_then(|t| t.wait(std::time::Duration::from_secs(1)).ok())).collect()).await.unwrap_or_default();
        let mut it = stats.into_iter();
        for s in calls.iter_mut().flat_map(|c| c.streams.iter_mut()) {
            if let Some(Some(st)) = it.next() {
                let dir = |l: &sixgate_relay::LegStats| Direction {
                    packets: l.rx_rtp.packets,
                    lost: l.rtp.lost,
                    jitter_ms: l.rtp.jitter.as_secs_f64() * 1000.0,
                    dropped: l.drops.total(),
                };
                s.from_caller = Some(dir(&st.legs[0]));
                s.from_callee = Some(dir(&st.legs[1]));
            }
        }
    }
    reply
}

/// What the engine holds, as the control socket shows it (run in the engine's owner task).
pub fn snapshot(engine: &crate::engine::Engine, now: std::time::Instant, request: &Request) -> Reply {
    match request {
        Request::Registrations { user } => {
            let unix = engine.unix_now(now);
            let registrar = engine.registrar();
            let mut registrations: Vec<Registration> = registrar
                .all()
                .filter(|b| user.as_deref().is_none_or(|u| b.aor == u))
                .filter(|b| b.expires_at > unix)
                .map(|b| {
                    let flow = registrar.flow(&b.flow);
                    Registration {
                        aor: b.aor.clone(),
                        contact: b.contact.clone(),
                        transport: format!("{:?}", b.flow.transport).to_ascii_lowercase(),
                        local: b.flow.local.to_string(),
                        remote: b.flow.remote.to_string(),
                        nat: b.nat.clone(),
                        expires_in: b.expires_at.saturating_sub(unix),
                        last_seen_ago: flow.map(|f| unix.saturating_sub(f.last_seen)),
                        keepalives_missed: flow.map_or(0, |f| f.missed),
                        user_agent: b.user_agent.clone(),
                        outbound: b.outbound(),
                    }
                })
                .collect();
            registrations.sort_by(|a, b| (&a.aor, &a.contact).cmp(&(&b.aor, &b.contact)));
            Reply::Registrations { registrations }
        }
        Request::Call { call_id } => match snapshot(engine, now, &Request::Calls) {
            Reply::Calls { calls } if calls.iter().any(|c| &c.call_id == call_id) => Reply::Calls { calls: calls.into_iter().filter(|c| &c.call_id == call_id).collect() },
            _ => Reply::Error { error: format!("no call with Call-ID {call_id}") },
        },
        Request::Diagnose { user } => {
            let Some(username) = engine.local_user(user) else {
                return Reply::Error { error: format!("{user} is not a local user") };
            };
            let unix = engine.unix_now(now);
            let registrar = engine.registrar();
            let bindings: Vec<_> = registrar.all().filter(|b| b.aor == username && b.expires_at > unix).collect();
            let flow = bindings.first().and_then(|b| {
                let f = registrar.flow(&b.flow)?;
                Some(crate::registrar::diagnose::FlowView {
                    remote: b.flow.remote,
                    reliable: b.flow.transport != crate::config::TransportKind::Udp,
                    keepalive_interval: registrar.config().keepalive_interval_secs,
                    survived_secs: f.survived_secs,
                    lost_after_secs: f.lost_after_secs,
                    missed: f.missed,
                })
            });
            let evidence = engine.phone_evidence(&username).cloned().unwrap_or_default();
            let evidence = crate::registrar::diagnose::Evidence { register: evidence.register.filter(|_| !bindings.is_empty()), ..evidence };
            Reply::Diagnosis {
                contacts: bindings.iter().map(|b| b.contact.clone()).collect(),
                findings: crate::registrar::diagnose::diagnose(&username, &evidence, flow.as_ref()),
                user: username,
            }
        }
        // Answered by the driver (it holds the config).
        Request::Reload { .. } => Reply::Error { error: "reload is the driver's to answer".into() },
        Request::Calls => {
            let leg = |l: &crate::engine::dialog::Leg| CallLeg {
                transport: format!("{:?}", l.transport).to_ascii_lowercase(),
                family: if l.remote.is_ipv6() { "IPv6".into() } else { "IPv4".into() },
                remote: l.remote.to_string(),
            };
            let mut calls: Vec<Call> = engine
                .dialogs()
                .map(|d| Call {
                    call_id: String::from_utf8_lossy(&d.call_id).into_owned(),
                    state: if d.early { "early".into() } else { "confirmed".into() },
                    caller: leg(&d.caller),
                    callee: leg(&d.callee),
                    user: d.user.clone(),
                    carrier: d.carrier.clone(),
                    duration_secs: now.saturating_duration_since(d.created).as_secs(),
                    streams: d
                        .media
                        .iter()
                        .flat_map(|m| m.call.streams.iter().flatten())
                        .map(|s| Stream {
                            session: s.session.0,
                            caller_side: s.legs[0].rtp.to_string(),
                            callee_side: s.legs[1].rtp.to_string(),
                            from_caller: None,
                            from_callee: None,
                        })
                        .collect(),
                    one_way_audio: d.watch.one_way.as_ref().map(|o| OneWayAudio { silent: o.silent.to_string(), cause: o.cause.clone() }),
                })
                .collect();
            calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
            Reply::Calls { calls }
        }
        // Answered by the socket task from the exported counters.
        Request::Stats => Reply::Error { error: "stats are not the engine's to answer".into() },
    }
}
