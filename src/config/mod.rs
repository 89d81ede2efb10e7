//! Configuration: one TOML file parsed into typed, validated structs at start.
//!
//! The file is walked key by key (rather than deserialized in one go) so that *every* problem is
//! reported at once, each with its key path: `listen[2].port: out of range 1..=65535 (got: 70000)`.
//! Unknown keys are errors. With no file, the embedded defaults (`conf/sixgate.toml`, compiled
//! in) are used. Must never: start with a value it did not check.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use toml::{Table, Value};

/// The documented example config, which is also what runs when no file is given.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../../conf/sixgate.toml");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum TransportKind {
    Udp,
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    pub transport: TransportKind,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct SipConfig {
    /// Lower-cased.
    pub domains: Vec<String>,
    pub server_header: String,
}

#[derive(Clone, Debug)]
pub struct Advertise {
    pub ipv6: Option<Ipv6Addr>,
    pub ipv4: Option<Ipv4Addr>,
    /// Whether the file set them (then they win over every listener's own address of that
    /// family, e.g. behind 1:1 NAT); otherwise they only stand in for unspecified listeners.
    pub ipv6_configured: bool,
    pub ipv4_configured: bool,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_tcp_connections: usize,
    pub max_tcp_connections_per_source: usize,
    pub tcp_idle_timeout_secs: u64,
    /// A TCP message that has begun must be complete within this many seconds (slowloris).
    pub tcp_message_timeout_secs: u64,
    /// Server transactions held at once; past it new requests get 503.
    pub max_transactions: usize,
    /// Dialogs held at once; past it new INVITEs get 503.
    pub max_dialogs: usize,
    /// A dialog without in-dialog traffic for this long is forgotten.
    pub dialog_idle_secs: u64,
    /// New INVITEs per second per source (IPv4 address or IPv6 /64), and the burst above it.
    pub invite_rate_per_source: u32,
    pub invite_burst_per_source: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_bytes: 65535,
            max_tcp_connections: 10000,
            max_tcp_connections_per_source: 64,
            tcp_idle_timeout_secs: 600,
            tcp_message_timeout_secs: 30,
            max_transactions: 1_000_000,
            max_dialogs: 500_000,
            dialog_idle_secs: 86_400,
            invite_rate_per_source: 50,
            invite_burst_per_source: 100,
        }
    }
}

/// RFC 3261 §17 timer bases.
#[derive(Clone, Debug)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    /// Timer C of a proxy's INVITE branches (RFC 3261 §16.6 step 11).
    pub timer_c: Duration,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5), timer_c: Duration::from_secs(181) }
    }
}

/// How the digest `uri` parameter must relate to the Request-URI (RFC 7616 §3.4.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestUriCheck {
    /// Same scheme, user, host and port as the Request-URI.
    Strict,
    /// Not compared (the response hash still covers it).
    Lenient,
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub realm: String,
    /// Digest algorithms offered in 407 challenges, in this order (one Proxy-Authenticate each).
    pub algorithms: Vec<crate::auth::Algorithm>,
    pub nonce_lifetime_secs: u64,
    pub digest_uri: DigestUriCheck,
    /// Failed authentications from one source (IPv4 address or IPv6 /64) within
    /// `ban_window_secs` that ban it; 0 = no bans.
    pub ban_failures: u32,
    pub ban_window_secs: u64,
    /// How long a banned source gets 403 without a challenge.
    pub ban_secs: u64,
}

/// When media goes through the relay (`[media] relay`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayMode {
    /// When the legs' families differ or a leg is behind NAT.
    Auto,
    Always,
    Never,
}

/// `[media]`: the RTP relay started inside `sixgate run`.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    pub relay: RelayMode,
    /// The relay's address per family (default: `[advertise]` of that family); none = that
    /// family's legs cannot be relayed.
    pub ipv6: Option<Ipv6Addr>,
    pub ipv4: Option<Ipv4Addr>,
    pub ports_v6: (u16, u16),
    pub ports_v4: (u16, u16),
    /// "auto", "io_uring" or "epoll".
    pub engine: String,
    pub cpus: Vec<usize>,
    /// No packet on a leg for this long ends the call (0: never).
    pub media_timeout_secs: u64,
    /// On a media timeout: BYE both sides (true) or only log it.
    pub end_call_on_timeout: bool,
    /// Media flowing one way only for this long after answer (or after a resume) raises the
    /// one-way-audio warning (0: never judged).
    pub one_way_audio_secs: u64,
    /// SO_RCVBUF / SO_SNDBUF of each relay socket in bytes (None: the kernel's default). A
    /// busy single stream loses packets past ~130k pps with the default input queue.
    pub socket_recv_buffer: Option<usize>,
    pub socket_send_buffer: Option<usize>,
}

/// Which registration store (`[state] store`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// `bindings.log`: append-only log with snapshots (the default; fastest commits).
    Log,
    /// `bindings.redb`: redb's B-tree database.
    Redb,
}

/// How the registrar keeps NAT bindings open and checks that a flow still answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepaliveKind {
    /// An OPTIONS request; its answer proves the phone is there (missed answers end the flow).
    Options,
    /// A bare CRLF CRLF datagram: keeps the NAT mapping open, proves nothing.
    Crlf,
}

/// `[registrar]`: binding lifetimes (RFC 3261 §10.3), keepalives and Outbound (RFC 5626).
#[derive(Clone, Debug)]
pub struct RegistrarConfig {
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub max_bindings_per_aor: usize,
    /// Seconds between keepalives to a NATed UDP flow; 0 = none.
    pub keepalive_interval_secs: u64,
    pub keepalive: KeepaliveKind,
    /// Unanswered OPTIONS keepalives in a row after which the flow is dead.
    pub keepalive_failures: u32,
    /// The Flow-Timer given to Outbound clients (RFC 5626 §4.4.1): how often they ping.
    pub flow_timer_secs: u32,
}

impl Default for RegistrarConfig {
    fn default() -> RegistrarConfig {
        RegistrarConfig {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_bindings_per_aor: 10,
            keepalive_interval_secs: 60,
            keepalive: KeepaliveKind::Options,
            keepalive_failures: 3,
            flow_timer_secs: 120,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RoutingConfig {
    /// Digits only, may be empty (numbers are then matched as dialled).
    pub country_code: String,
    pub national_prefix: String,
    pub international_prefix: String,
    pub max_branches: usize,
}

/// A user's secret: the password, or the HA1 per algorithm (RFC 7616 §3.4.2: H(user:realm:password));
/// a user with only an MD5 HA1 cannot answer SHA-256 challenges and the other way round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Secret {
    Password(String),
    Ha1 { md5: Option<String>, sha256: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub username: String,
    pub secret: Secret,
    pub numbers: Vec<String>,
    pub aliases: Vec<String>,
    pub contacts: Vec<TargetUri>,
}

/// How a carrier wants the called number written in its Request-URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberFormat {
    /// `+442071234567`
    E164,
    /// `442071234567`
    E164NoPlus,
    /// `02071234567` (national prefix + national number; other countries keep `+`)
    National,
}

#[derive(Clone, Debug)]
pub struct Carrier {
    pub name: String,
    pub uri: TargetUri,
    pub prefixes: Vec<String>,
    pub priority: u32,
    pub weight: u32,
    pub source_cidrs: Vec<Cidr>,
    /// Username and password answering the carrier's 401/407.
    pub credentials: Option<(String, String)>,
    pub number_format: NumberFormat,
    pub probe_interval_secs: u64,
}

/// An address block (`192.0.2.0/28`, `2001:db8::/48`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, l) = s.split_once('/').map_or((s, None), |(a, l)| (a, Some(l)));
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv6() { 128 } else { 32 };
        let len = match l {
            None => max,
            Some(l) => l.parse::<u8>().ok().filter(|&n| n <= max)?,
        };
        Some(Cidr { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 source is its IPv4 address.
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - u32::from(self.len)) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A SIP URI from the config (a static contact, a carrier), held as owned text with what
/// routing needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUri {
    pub text: String,
    pub user: Option<String>,
    /// Without brackets.
    pub host: String,
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    /// The `;transport=` parameter, when it names one we speak.
    pub transport: Option<TransportKind>,
    pub secure: bool,
}

impl TargetUri {
    pub fn parse(s: &str) -> Result<TargetUri, &'static str> {
        use crate::message::{uri::parse_uri, Host, Scheme, Span};
        let buf = s.as_bytes();
        let u = parse_uri(buf, Span::new(0, buf.len()))?;
        if !u.is_sip() {
            return Err("must be a sip: or sips: URI");
        }
        let host = match u.host.ok_or("missing host")? {
            Host::V4(a) => a.to_string(),
            Host::V6(a) => a.to_string(),
            Host::Name(n) => String::from_utf8_lossy(n.of(buf)).to_ascii_lowercase(),
        };
        let transport = match u.param(buf, "transport") {
            None => None,
            Some(Some(t)) if t.eq_ignore_ascii_case(b"udp") => Some(TransportKind::Udp),
            Some(Some(t)) if t.eq_ignore_ascii_case(b"tcp") => Some(TransportKind::Tcp),
            Some(_) => return Err("transport must be udp or tcp"),
        };
        Ok(TargetUri {
            text: s.to_string(),
            user: u.user.map(|x| String::from_utf8_lossy(x.of(buf)).into_owned()),
            host,
            ip: u.host.and_then(|h| h.ip()),
            port: u.port,
            transport,
            secure: u.scheme == Scheme::Sips,
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct DnsConfig {
    /// Empty: the system's resolvers.
    pub servers: Vec<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub sip: SipConfig,
    pub listen: Vec<Listen>,
    pub advertise: Advertise,
    pub limits: Limits,
    pub timers: Timers,
    pub auth: AuthConfig,
    pub routing: RoutingConfig,
    pub users: Vec<User>,
    pub carriers: Vec<Carrier>,
    pub dns: DnsConfig,
    pub registrar: RegistrarConfig,
    /// Where durable state lives (the registration store, the nonce key). Unset in the file:
    /// `$STATE_DIRECTORY` (systemd's StateDirectory), else `./sixgate-state`.
    pub state_dir: std::path::PathBuf,
    pub store: StoreKind,
    /// `[state] call_records`: the file (in `state_dir` unless absolute) where one JSON line per
    /// finished call is appended; `None`: no call records.
    pub call_records: Option<std::path::PathBuf>,
    pub media: MediaConfig,
    /// `[metrics] listen`: where Prometheus scrapes `GET /metrics` (a loopback address; none:
    /// no HTTP listener).
    pub metrics_listen: Option<SocketAddr>,
    pub log_level: String,
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub problem: String,
    pub got: Option<String>,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)?;
        if let Some(g) = &self.got {
            write!(f, " (got: {g})")?;
        }
        Ok(())
    }
}

/// All problems found in a config file.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl Config {
    pub fn embedded() -> Config {
        // The embedded file is checked by a unit test; failing here is a build defect.
        Config::from_toml(EMBEDDED_DEFAULTS).expect("embedded defaults are valid")
    }

    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigIssue { path: path.display().to_string(), problem: format!("cannot read: {e}"), got: None }])
        })?;
        Config::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigIssue { path: "(file)".into(), problem: format!("TOML syntax: {}", e.message()), got: e.span().map(|s| line_of(text, s.start)) }])
        })?;
        let mut r = Reader::default();
        let cfg = r.config(&table);
        if r.issues.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(r.issues))
        }
    }

    /// The address advertised for the family of `local` (Via, Record-Route, SDP).
    pub fn advertised_ip(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.advertise.ipv6.map(IpAddr::V6)
        } else {
            self.advertise.ipv4.map(IpAddr::V4)
        }
    }
}

fn line_of(text: &str, offset: usize) -> String {
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    format!("line {line}")
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

#[derive(Default)]
struct Reader {
    issues: Vec<ConfigIssue>,
}

impl Reader {
    fn issue(&mut self, path: &str, problem: impl Into<String>, got: Option<&Value>) {
        self.issues.push(ConfigIssue { path: path.to_string(), problem: problem.into(), got: got.map(show) });
    }

    fn known_keys(&mut self, t: &Table, prefix: &str, allowed: &[&str]) {
        for (k, v) in t {
            if !allowed.contains(&k.as_str()) {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                self.issue(&p, format!("unknown key (known: {})", allowed.join(", ")), Some(v));
            }
        }
    }

    fn section<'t>(&mut self, root: &'t Table, key: &str) -> Option<&'t Table> {
        match root.get(key) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(v) => {
                self.issue(key, "must be a table", Some(v));
                None
            }
        }
    }

    fn string(&mut self, t: Option<&Table>, path: &str, key: &str) -> Option<String> {
        match t?.get(key)? {
            Value::String(s) => Some(s.clone()),
            v => {
                self.issue(&format!("{path}.{key}"), "must be a string", Some(v));
                None
            }
        }
    }

    fn int(&mut self, t: Option<&Table>, path: &str, key: &str, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        let p = format!("{path}.{key}");
        match t?.get(key)? {
            Value::Integer(n) if range.contains(n) => Some(*n),
            v @ Value::Integer(_) => {
                self.issue(&p, format!("out of range {}..={}", range.start(), range.end()), Some(v));
                None
            }
            v => {
                self.issue(&p, "must be an integer", Some(v));
                None
            }
        }
    }

    fn ip(&mut self, t: Option<&Table>, path: &str, key: &str) -> Option<IpAddr> {
        let s = self.string(t, path, key)?;
        match s.parse::<IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.issue(&format!("{path}.{key}"), "not an IP address literal", Some(&Value::String(s)));
                None
            }
        }
    }

    /// A specific (not unspecified) address of the family `v6` says, or an issue.
    fn specific_ip(&mut self, t: Option<&Table>, path: &str, key: &str, v6: bool) -> Option<IpAddr> {
        let a = self.ip(t, path, key)?;
        if a.is_ipv6() == v6 && !a.is_unspecified() {
            return Some(a);
        }
        let family = if v6 { "IPv6" } else { "IPv4" };
        self.issue(&format!("{path}.{key}"), format!("must be a specific {family} address"), Some(&Value::String(a.to_string())));
        None
    }

    fn config(&mut self, root: &Table) -> Config {
        self.known_keys(root, "", &["sip", "listen", "advertise", "limits", "timers", "auth", "routing", "users", "carriers", "dns", "log", "registrar", "state", "media", "metrics"]);

        let sip_t = self.section(root, "sip");
        if let Some(t) = sip_t {
            self.known_keys(t, "sip", &["domains", "server_header"]);
        }
        let mut domains = Vec::new();
        match sip_t.and_then(|t| t.get("domains")) {
            None => self.issue("sip.domains", "missing: list at least one SIP domain", None),
            Some(Value::Array(a)) => {
                if a.is_empty() {
                    self.issue("sip.domains", "must list at least one domain", None);
                }
                for (i, v) in a.iter().enumerate() {
                    match v {
                        Value::String(s) if valid_domain(s) => domains.push(s.to_ascii_lowercase()),
                        v => self.issue(&format!("sip.domains[{i}]"), "not a host name or IP address", Some(v)),
                    }
                }
            }
            Some(v) => self.issue("sip.domains", "must be an array of strings", Some(v)),
        }
        let server_header = self.string(sip_t, "sip", "server_header").unwrap_or_else(|| "sixgate".into());
        if server_header.chars().any(|c| c.is_control()) {
            self.issue("sip.server_header", "must not contain control characters", Some(&Value::String(server_header.clone())));
        }

        let listen = self.listeners(root);

        let adv_t = self.section(root, "advertise");
        if let Some(t) = adv_t {
            self.known_keys(t, "advertise", &["ipv6", "ipv4"]);
        }
        let mut advertise = Advertise { ipv6: None, ipv4: None, ipv6_configured: false, ipv4_configured: false };
        if let Some(IpAddr::V6(a)) = self.specific_ip(adv_t, "advertise", "ipv6", true) {
            advertise.ipv6 = Some(a);
            advertise.ipv6_configured = true;
        }
        if let Some(IpAddr::V4(a)) = self.specific_ip(adv_t, "advertise", "ipv4", false) {
            advertise.ipv4 = Some(a);
            advertise.ipv4_configured = true;
        }
        // Default each family's advertised address to its first specific listener.
        for l in &listen {
            match l.addr.ip() {
                IpAddr::V6(a) if advertise.ipv6.is_none() && !a.is_unspecified() => advertise.ipv6 = Some(a),
                IpAddr::V4(a) if advertise.ipv4.is_none() && !a.is_unspecified() => advertise.ipv4 = Some(a),
                _ => {}
            }
        }
        for (i, l) in listen.iter().enumerate() {
            let missing = match l.addr.ip() {
                IpAddr::V6(_) => advertise.ipv6.is_none(),
                IpAddr::V4(_) => advertise.ipv4.is_none(),
            };
            if missing {
                let fam = if l.addr.is_ipv6() { "ipv6" } else { "ipv4" };
                self.issue(&format!("advertise.{fam}"), format!("required: listen[{i}] is bound to the unspecified address"), None);
            }
        }

        let lim_t = self.section(root, "limits");
        if let Some(t) = lim_t {
            self.known_keys(
                t,
                "limits",
                &[
                    "max_message_bytes", "max_tcp_connections", "max_tcp_connections_per_source", "tcp_idle_timeout_secs",
                    "tcp_message_timeout_secs", "max_transactions", "max_dialogs", "dialog_idle_secs",
                    "invite_rate_per_source", "invite_burst_per_source",
                ],
            );
        }
        let d = Limits::default();
        let limits = Limits {
            max_message_bytes: self.int(lim_t, "limits", "max_message_bytes", 1024..=65535).map_or(d.max_message_bytes, |v| v as usize),
            max_tcp_connections: self.int(lim_t, "limits", "max_tcp_connections", 1..=1_000_000).map_or(d.max_tcp_connections, |v| v as usize),
            max_tcp_connections_per_source: self
                .int(lim_t, "limits", "max_tcp_connections_per_source", 1..=65535)
                .map_or(d.max_tcp_connections_per_source, |v| v as usize),
            tcp_idle_timeout_secs: self.int(lim_t, "limits", "tcp_idle_timeout_secs", 10..=86400).map_or(d.tcp_idle_timeout_secs, |v| v as u64),
            tcp_message_timeout_secs: self.int(lim_t, "limits", "tcp_message_timeout_secs", 1..=600).map_or(d.tcp_message_timeout_secs, |v| v as u64),
            max_transactions: self.int(lim_t, "limits", "max_transactions", 1..=10_000_000).map_or(d.max_transactions, |v| v as usize),
            max_dialogs: self.int(lim_t, "limits", "max_dialogs", 1..=10_000_000).map_or(d.max_dialogs, |v| v as usize),
            dialog_idle_secs: self.int(lim_t, "limits", "dialog_idle_secs", 60..=604_800).map_or(d.dialog_idle_secs, |v| v as u64),
            invite_rate_per_source: self.int(lim_t, "limits", "invite_rate_per_source", 1..=1_000_000).map_or(d.invite_rate_per_source, |v| v as u32),
            invite_burst_per_source: self.int(lim_t, "limits", "invite_burst_per_source", 1..=1_000_000).map_or(d.invite_burst_per_source, |v| v as u32),
        };

        let timers = self.timers(root);
        let auth = self.auth(root, domains.first().cloned().unwrap_or_default());
        let routing = self.routing(root);
        let users = self.users(root);
        let carriers = self.carriers(root);
        let dns = self.dns(root);
        let registrar = self.registrar(root, &limits);
        let state_t = self.section(root, "state");
        if let Some(t) = state_t {
            self.known_keys(t, "state", &["dir", "store", "call_records"]);
        }
        let state_dir = match self.string(state_t, "state", "dir") {
            Some(d) if d.is_empty() => {
                self.issue("state.dir", "must not be empty (leave it out for the default)", None);
                std::path::PathBuf::new()
            }
            Some(d) => d.into(),
            None => std::env::var_os("STATE_DIRECTORY")
                // systemd may list several, separated by ':'; the first is ours.
                .and_then(|v| v.to_str().and_then(|s| s.split(':').next()).map(std::path::PathBuf::from))
                .unwrap_or_else(|| "sixgate-state".into()),
        };

        let store = match self.string(state_t, "state", "store").as_deref() {
            None | Some("log") => StoreKind::Log,
            Some("redb") => StoreKind::Redb,
            Some(other) => {
                self.issue("state.store", "must be \"log\" or \"redb\"", Some(&Value::String(other.into())));
                StoreKind::Log
            }
        };

        let call_records = match self.string(state_t, "state", "call_records") {
            None => Some(state_dir.join("calls.jsonl")),
            Some(f) if f.is_empty() => None,
            Some(f) if f.ends_with('/') => {
                self.issue("state.call_records", "must name a file, not a directory (\"\" turns call records off)", Some(&Value::String(f)));
                None
            }
            Some(f) => Some(state_dir.join(f)),
        };
        let media = self.media(root, &advertise);
        let metrics_t = self.section(root, "metrics");
        if let Some(t) = metrics_t {
            self.known_keys(t, "metrics", &["listen"]);
        }
        let metrics_listen = match self.string(metrics_t, "metrics", "listen") {
            None => None,
            Some(s) => match s.parse::<SocketAddr>() {
                // Counters tell who calls whom and how much: only for this host.
                Ok(a) if a.ip().is_loopback() && a.port() != 0 => Some(a),
                Ok(_) => {
                    self.issue("metrics.listen", "must be a loopback address with a port (127.0.0.1:9464 or [::1]:9464)", Some(&Value::String(s)));
                    None
                }
                Err(_) => {
                    self.issue("metrics.listen", "must be \"ip:port\" (IPv6 as [addr]:port)", Some(&Value::String(s)));
                    None
                }
            },
        };

        let log_t = self.section(root, "log");
        if let Some(t) = log_t {
            self.known_keys(t, "log", &["level"]);
        }
        let log_level = self.string(log_t, "log", "level").unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            self.issue("log.level", "must be one of error, warn, info, debug, trace", Some(&Value::String(log_level.clone())));
        }

        Config { sip: SipConfig { domains, server_header }, listen, advertise, limits, timers, auth, routing, users, carriers, dns, registrar, state_dir, store, call_records, media, metrics_listen, log_level }
    }

    fn media(&mut self, root: &Table, advertise: &Advertise) -> MediaConfig {
        let t = self.section(root, "media");
        if let Some(t) = t {
            self.known_keys(t, "media", &["relay", "ipv6", "ipv4", "ports_v6", "ports_v4", "engine", "cpus", "media_timeout_secs", "end_call_on_timeout", "one_way_audio_secs", "socket_recv_buffer", "socket_send_buffer"]);
        }
        let relay = match self.string(t, "media", "relay").as_deref() {
            None | Some("auto") => RelayMode::Auto,
            Some("always") => RelayMode::Always,
            Some("never") => RelayMode::Never,
            Some(other) => {
                self.issue("media.relay", "must be \"auto\", \"always\" or \"never\"", Some(&Value::String(other.into())));
                RelayMode::Auto
            }
        };
        let given = t.is_some_and(|t| t.contains_key("ipv6"));
        let ipv6 = match self.specific_ip(t, "media", "ipv6", true) {
            // A link-local address is useless to anyone off the link: never offered in SDP.
            Some(IpAddr::V6(a)) if a.is_unicast_link_local() => {
                self.issue("media.ipv6", "must not be link-local (fe80::/10): phones off this link cannot reach it", Some(&Value::String(a.to_string())));
                None
            }
            Some(IpAddr::V6(a)) => Some(a),
            _ if given => None,
            _ => advertise.ipv6.filter(|a| !a.is_unicast_link_local()),
        };
        let given = t.is_some_and(|t| t.contains_key("ipv4"));
        let ipv4 = match self.specific_ip(t, "media", "ipv4", false) {
            Some(IpAddr::V4(a)) => Some(a),
            _ if given => None,
            _ => advertise.ipv4,
        };
        let range = |r: &mut Self, key: &str| -> (u16, u16) {
            match t.and_then(|t| t.get(key)) {
                None => (30000, 39999),
                Some(Value::Array(a)) if a.len() == 2 => match (a[0].as_integer(), a[1].as_integer()) {
                    (Some(lo), Some(hi)) if (1024..=65535).contains(&lo) && (lo..=65535).contains(&hi) && hi - lo >= 1 => (lo as u16, hi as u16),
                    _ => {
                        r.issue(&format!("media.{key}"), "must be [low, high] with 1024 <= low < high <= 65535", Some(&Value::Array(a.clone())));
                        (30000, 39999)
                    }
                },
                Some(v) => {
                    r.issue(&format!("media.{key}"), "must be [low, high]", Some(v));
                    (30000, 39999)
                }
            }
        };
        let ports_v6 = range(self, "ports_v6");
        let ports_v4 = range(self, "ports_v4");
        let engine = self.string(t, "media", "engine").unwrap_or_else(|| "auto".into());
        if !["auto", "io_uring", "epoll"].contains(&engine.as_str()) {
            self.issue("media.engine", "must be \"auto\", \"io_uring\" or \"epoll\"", Some(&Value::String(engine.clone())));
        }
        let mut cpus = Vec::new();
        match t.and_then(|t| t.get("cpus")) {
            None => {}
            Some(Value::Array(a)) => {
                for (i, v) in a.iter().enumerate() {
                    match v.as_integer() {
                        Some(n) if (0..=4095).contains(&n) => cpus.push(n as usize),
                        _ => self.issue(&format!("media.cpus[{i}]"), "must be a CPU number 0..=4095", Some(v)),
                    }
                }
            }
            Some(v) => self.issue("media.cpus", "must be an array of CPU numbers", Some(v)),
        }
        let end_call_on_timeout = match t.and_then(|t| t.get("end_call_on_timeout")) {
            None => true,
            Some(Value::Boolean(b)) => *b,
            Some(v) => {
                self.issue("media.end_call_on_timeout", "must be true or false", Some(v));
                true
            }
        };
        MediaConfig {
            relay,
            ipv6,
            ipv4,
            ports_v6,
            ports_v4,
            engine,
            cpus,
            media_timeout_secs: self.int(t, "media", "media_timeout_secs", 0..=86_400).unwrap_or(60) as u64,
            end_call_on_timeout,
            one_way_audio_secs: self.int(t, "media", "one_way_audio_secs", 0..=3600).unwrap_or(5) as u64,
            socket_recv_buffer: self.int(t, "media", "socket_recv_buffer", 4096..=268_435_456).map(|n| n as usize),
            socket_send_buffer: self.int(t, "media", "socket_send_buffer", 4096..=268_435_456).map(|n| n as usize),
        }
    }

    fn registrar(&mut self, root: &Table, limits: &Limits) -> RegistrarConfig {
        let t = self.section(root, "registrar");
        if let Some(t) = t {
            self.known_keys(
                t,
                "registrar",
                &["min_expires", "max_expires", "default_expires", "max_bindings_per_aor", "keepalive_interval_secs", "keepalive", "keepalive_failures", "flow_timer_secs"],
            );
        }
        let d = RegistrarConfig::default();
        let keepalive = match self.string(t, "registrar", "keepalive").as_deref() {
            None | Some("options") => KeepaliveKind::Options,
            Some("crlf") => KeepaliveKind::Crlf,
            Some(other) => {
                self.issue("registrar.keepalive", "must be \"options\" or \"crlf\"", Some(&Value::String(other.into())));
                KeepaliveKind::Options
            }
        };
        let r = RegistrarConfig {
            min_expires: self.int(t, "registrar", "min_expires", 1..=86_400).map_or(d.min_expires, |v| v as u32),
            max_expires: self.int(t, "registrar", "max_expires", 1..=604_800).map_or(d.max_expires, |v| v as u32),
            default_expires: self.int(t, "registrar", "default_expires", 1..=604_800).map_or(d.default_expires, |v| v as u32),
            max_bindings_per_aor: self.int(t, "registrar", "max_bindings_per_aor", 1..=100).map_or(d.max_bindings_per_aor, |v| v as usize),
            keepalive_interval_secs: self.int(t, "registrar", "keepalive_interval_secs", 0..=3600).map_or(d.keepalive_interval_secs, |v| v as u64),
            keepalive,
            keepalive_failures: self.int(t, "registrar", "keepalive_failures", 1..=100).map_or(d.keepalive_failures, |v| v as u32),
            flow_timer_secs: self.int(t, "registrar", "flow_timer_secs", 10..=3600).map_or(d.flow_timer_secs, |v| v as u32),
        };
        if r.min_expires > r.max_expires {
            self.issue("registrar.min_expires", "must not be above registrar.max_expires", Some(&Value::Integer(i64::from(r.min_expires))));
        }
        if u64::from(r.flow_timer_secs) >= limits.tcp_idle_timeout_secs {
            // Outbound clients over TCP ping at this interval; the idle timeout must not beat them.
            self.issue("registrar.flow_timer_secs", "must be below limits.tcp_idle_timeout_secs", Some(&Value::Integer(i64::from(r.flow_timer_secs))));
        }
        r
    }

    fn timers(&mut self, root: &Table) -> Timers {
        let t = self.section(root, "timers");
        if let Some(t) = t {
            self.known_keys(t, "timers", &["t1_ms", "t2_ms", "t4_ms", "timer_c_secs"]);
        }
        let d = Timers::default();
        let ms = |v: i64| Duration::from_millis(v as u64);
        let timers = Timers {
            t1: self.int(t, "timers", "t1_ms", 1..=10_000).map_or(d.t1, ms),
            t2: self.int(t, "timers", "t2_ms", 1..=60_000).map_or(d.t2, ms),
            t4: self.int(t, "timers", "t4_ms", 1..=60_000).map_or(d.t4, ms),
            timer_c: self.int(t, "timers", "timer_c_secs", 181..=3600).map_or(d.timer_c, |v| Duration::from_secs(v as u64)),
        };
        if timers.t2 < timers.t1 {
            self.issue("timers.t2_ms", "must not be smaller than timers.t1_ms", Some(&Value::Integer(timers.t2.as_millis() as i64)));
        }
        timers
    }

    fn auth(&mut self, root: &Table, default_realm: String) -> AuthConfig {
        let t = self.section(root, "auth");
        if let Some(t) = t {
            self.known_keys(t, "auth", &["realm", "nonce_lifetime_secs", "digest_uri", "algorithms", "ban_failures", "ban_window_secs", "ban_secs"]);
        }
        let realm = self.string(t, "auth", "realm").unwrap_or(default_realm);
        if realm.is_empty() || realm.bytes().any(|b| b < b' ' || b == b'"' || b == b'\\' || b >= 0x7f) {
            self.issue("auth.realm", "must be non-empty printable ASCII without quotes or backslashes", Some(&Value::String(realm.clone())));
        }
        let digest_uri = match self.string(t, "auth", "digest_uri").as_deref() {
            None | Some("strict") => DigestUriCheck::Strict,
            Some("lenient") => DigestUriCheck::Lenient,
            Some(other) => {
                self.issue("auth.digest_uri", "must be \"strict\" or \"lenient\"", Some(&Value::String(other.into())));
                DigestUriCheck::Strict
            }
        };
        let mut algorithms = Vec::new();
        for (i, a) in self.strings(t, "auth", "algorithms").into_iter().enumerate() {
            match crate::auth::Algorithm::from_name(&a) {
                Some(x) if !algorithms.contains(&x) => algorithms.push(x),
                Some(_) => self.issue(&format!("auth.algorithms[{i}]"), "listed twice", Some(&Value::String(a))),
                None => self.issue(&format!("auth.algorithms[{i}]"), "must be \"SHA-256\" or \"MD5\"", Some(&Value::String(a))),
            }
        }
        if algorithms.is_empty() {
            algorithms = vec![crate::auth::Algorithm::Md5];
        }
        AuthConfig {
            realm,
            algorithms,
            nonce_lifetime_secs: self.int(t, "auth", "nonce_lifetime_secs", 10..=3600).unwrap_or(300) as u64,
            digest_uri,
            ban_failures: self.int(t, "auth", "ban_failures", 0..=1_000_000).unwrap_or(10) as u32,
            ban_window_secs: self.int(t, "auth", "ban_window_secs", 1..=86_400).unwrap_or(600) as u64,
            ban_secs: self.int(t, "auth", "ban_secs", 1..=604_800).unwrap_or(900) as u64,
        }
    }

    fn routing(&mut self, root: &Table) -> RoutingConfig {
        let t = self.section(root, "routing");
        if let Some(t) = t {
            self.known_keys(t, "routing", &["country_code", "national_prefix", "international_prefix", "max_branches"]);
        }
        let digits = |r: &mut Self, key: &str, default: &str| {
            let v = r.string(t, "routing", key).unwrap_or_else(|| default.into());
            if !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 4 {
                r.issue(&format!("routing.{key}"), "must be up to 4 digits", Some(&Value::String(v.clone())));
            }
            v
        };
        let country_code = digits(self, "country_code", "");
        let national_prefix = digits(self, "national_prefix", "0");
        let international_prefix = digits(self, "international_prefix", "00");
        RoutingConfig {
            country_code,
            national_prefix,
            international_prefix,
            max_branches: self.int(t, "routing", "max_branches", 1..=32).unwrap_or(8) as usize,
        }
    }

    fn dns(&mut self, root: &Table) -> DnsConfig {
        let t = self.section(root, "dns");
        if let Some(t) = t {
            self.known_keys(t, "dns", &["servers"]);
        }
        let mut servers = Vec::new();
        for (i, s) in self.strings(t, "dns", "servers").into_iter().enumerate() {
            match s.parse::<SocketAddr>() {
                Ok(a) => servers.push(a),
                Err(_) => self.issue(&format!("dns.servers[{i}]"), "must be \"ip:port\" (IPv6 as [addr]:port)", Some(&Value::String(s))),
            }
        }
        DnsConfig { servers }
    }

    /// An optional array of strings; problems reported per element.
    fn strings(&mut self, t: Option<&Table>, path: &str, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        match t.and_then(|t| t.get(key)) {
            None => {}
            Some(Value::Array(a)) => {
                for (i, v) in a.iter().enumerate() {
                    match v {
                        Value::String(s) => out.push(s.clone()),
                        v => self.issue(&format!("{path}.{key}[{i}]"), "must be a string", Some(v)),
                    }
                }
            }
            Some(v) => self.issue(&format!("{path}.{key}"), "must be an array of strings", Some(v)),
        }
        out
    }

    /// The tables of an optional `[[key]]` array, each with its path.
    fn tables<'t>(&mut self, root: &'t Table, key: &str) -> Vec<(String, &'t Table)> {
        match root.get(key) {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    Value::Table(t) => Some((format!("{key}[{i}]"), t)),
                    v => {
                        self.issue(&format!("{key}[{i}]"), "must be a table", Some(v));
                        None
                    }
                })
                .collect(),
            Some(v) => {
                self.issue(key, format!("must be an array of tables ([[{key}]])"), Some(v));
                Vec::new()
            }
        }
    }

    fn required_string(&mut self, t: &Table, path: &str, key: &str) -> Option<String> {
        if !t.contains_key(key) {
            self.issue(&format!("{path}.{key}"), "missing", None);
        }
        self.string(Some(t), path, key)
    }

    fn users(&mut self, root: &Table) -> Vec<User> {
        let mut out: Vec<User> = Vec::new();
        let mut usernames = std::collections::HashSet::new();
        for (path, t) in self.tables(root, "users") {
            self.known_keys(t, &path, &["username", "password", "ha1", "ha1_sha256", "numbers", "aliases", "contacts"]);
            let username = self.required_string(t, &path, "username").unwrap_or_default();
            if !username.is_empty() && !username.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b)) {
                self.issue(&format!("{path}.username"), "must be a SIP user part (letters, digits, -_.!~*'()&=+$,;?/)", Some(&Value::String(username.clone())));
            }
            // A set, not a scan: a registrar may have hundreds of thousands of users.
            if !usernames.insert(username.clone()) {
                self.issue(&format!("{path}.username"), "duplicates another user", Some(&Value::String(username.clone())));
            }
            let ha1 = |r: &mut Self, key: &str, len: usize, what: &str| {
                let h = r.string(Some(t), &path, key)?;
                if h.len() == len && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Some(h.to_ascii_lowercase())
                } else {
                    r.issue(&format!("{path}.{key}"), format!("must be {len} hex digits ({what} of user:realm:password)"), Some(&Value::String(h)));
                    Some(String::new())
                }
            };
            let md5 = ha1(self, "ha1", 32, "MD5");
            let sha256 = ha1(self, "ha1_sha256", 64, "SHA-256");
            let secret = match (self.string(Some(t), &path, "password"), md5.is_some() || sha256.is_some()) {
                (Some(p), false) if !p.is_empty() => Secret::Password(p),
                (None, true) => Secret::Ha1 { md5, sha256 },
                (Some(_), true) => {
                    self.issue(&path, "give password or ha1/ha1_sha256, not both", None);
                    Secret::Password(String::new())
                }
                _ => {
                    self.issue(&format!("{path}.password"), "missing: give password, ha1 or ha1_sha256", None);
                    Secret::Password(String::new())
                }
            };
            let numbers = self.strings(Some(t), &path, "numbers");
            for (i, n) in numbers.iter().enumerate() {
                if !is_number(n) {
                    self.issue(&format!("{path}.numbers[{i}]"), "must be digits with an optional leading +", Some(&Value::String(n.clone())));
                }
            }
            let aliases = self.strings(Some(t), &path, "aliases");
            let mut contacts = Vec::new();
            for (i, c) in self.strings(Some(t), &path, "contacts").into_iter().enumerate() {
                match TargetUri::parse(&c) {
                    Ok(u) if u.secure => self.issue(&format!("{path}.contacts[{i}]"), SIPS_UNSUPPORTED, Some(&Value::String(c))),
                    Ok(u) => contacts.push(u),
                    Err(e) => self.issue(&format!("{path}.contacts[{i}]"), e, Some(&Value::String(c))),
                }
            }
            out.push(User { username, secret, numbers, aliases, contacts });
        }
        // A number or alias must lead to one user only.
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (i, u) in out.iter().enumerate() {
            for name in u.numbers.iter().chain(&u.aliases).chain(std::iter::once(&u.username)) {
                if let Some(&j) = seen.get(name) {
                    if j != i {
                        let issue = ConfigIssue { path: format!("users[{i}]"), problem: format!("{name:?} also reaches users[{j}]"), got: None };
                        self.issues.push(issue);
                    }
                } else {
                    seen.insert(name.clone(), i);
                }
            }
        }
        out
    }

    fn carriers(&mut self, root: &Table) -> Vec<Carrier> {
        let mut out: Vec<Carrier> = Vec::new();
        for (path, t) in self.tables(root, "carriers") {
            self.known_keys(
                t,
                &path,
                &["name", "uri", "prefixes", "priority", "weight", "source_cidrs", "username", "password", "number_format", "probe_interval_secs"],
            );
            let name = self.required_string(t, &path, "name").unwrap_or_default();
            if out.iter().any(|c| c.name == name) {
                self.issue(&format!("{path}.name"), "duplicates another carrier", Some(&Value::String(name.clone())));
            }
            let uri = match self.required_string(t, &path, "uri") {
                Some(s) => match TargetUri::parse(&s) {
                    Ok(u) if u.secure => {
                        self.issue(&format!("{path}.uri"), SIPS_UNSUPPORTED, Some(&Value::String(s)));
                        None
                    }
                    Ok(u) => Some(u),
                    Err(e) => {
                        self.issue(&format!("{path}.uri"), e, Some(&Value::String(s)));
                        None
                    }
                },
                None => None,
            };
            let prefixes = self.strings(Some(t), &path, "prefixes");
            for (i, p) in prefixes.iter().enumerate() {
                if !(p == "+" || is_number(p)) {
                    self.issue(&format!("{path}.prefixes[{i}]"), "must be an E.164 prefix like \"+44\" (\"+\" matches every number)", Some(&Value::String(p.clone())));
                }
            }
            let mut source_cidrs = Vec::new();
            for (i, c) in self.strings(Some(t), &path, "source_cidrs").into_iter().enumerate() {
                match Cidr::parse(&c) {
                    Some(n) => source_cidrs.push(n),
                    None => self.issue(&format!("{path}.source_cidrs[{i}]"), "must be an address or address/prefix-length", Some(&Value::String(c))),
                }
            }
            let credentials = match (self.string(Some(t), &path, "username"), self.string(Some(t), &path, "password")) {
                (Some(u), Some(p)) => Some((u, p)),
                (None, None) => None,
                _ => {
                    self.issue(&path, "username and password go together", None);
                    None
                }
            };
            let number_format = match self.string(Some(t), &path, "number_format").as_deref() {
                None | Some("e164") => NumberFormat::E164,
                Some("e164_no_plus") => NumberFormat::E164NoPlus,
                Some("national") => NumberFormat::National,
                Some(o) => {
                    self.issue(&format!("{path}.number_format"), "must be \"e164\", \"e164_no_plus\" or \"national\"", Some(&Value::String(o.into())));
                    NumberFormat::E164
                }
            };
            let priority = self.int(Some(t), &path, "priority", 0..=65535).unwrap_or(1) as u32;
            let weight = self.int(Some(t), &path, "weight", 1..=1000).unwrap_or(10) as u32;
            let probe_interval_secs = self.int(Some(t), &path, "probe_interval_secs", 0..=3600).unwrap_or(30) as u64;
            if let Some(uri) = uri {
                out.push(Carrier { name, uri, prefixes, priority, weight, source_cidrs, credentials, number_format, probe_interval_secs });
            }
        }
        out
    }

    fn listeners(&mut self, root: &Table) -> Vec<Listen> {
        let mut out: Vec<Listen> = Vec::new();
        let arr = match root.get("listen") {
            None => {
                self.issue("listen", "missing: add at least one [[listen]] socket", None);
                return out;
            }
            Some(Value::Array(a)) => a,
            Some(v) => {
                self.issue("listen", "must be an array of tables ([[listen]])", Some(v));
                return out;
            }
        };
        if arr.is_empty() {
            self.issue("listen", "must have at least one socket", None);
        }
        for (i, v) in arr.iter().enumerate() {
            let path = format!("listen[{i}]");
            let Value::Table(t) = v else {
                self.issue(&path, "must be a table", Some(v));
                continue;
            };
            self.known_keys(t, &path, &["transport", "address", "port"]);
            let transport = match self.string(Some(t), &path, "transport").as_deref() {
                Some("udp") => Some(TransportKind::Udp),
                Some("tcp") => Some(TransportKind::Tcp),
                Some(other) => {
                    self.issue(&format!("{path}.transport"), "must be \"udp\" or \"tcp\"", Some(&Value::String(other.into())));
                    None
                }
                None => {
                    if !t.contains_key("transport") {
                        self.issue(&format!("{path}.transport"), "missing", None);
                    }
                    None
                }
            };
            let address = self.ip(Some(t), &path, "address");
            if !t.contains_key("address") {
                self.issue(&format!("{path}.address"), "missing", None);
            }
            let port = match t.get("port") {
                None => {
                    self.issue(&format!("{path}.port"), "missing", None);
                    None
                }
                Some(_) => self.int(Some(t), &path, "port", 1..=65535),
            };
            if let (Some(TransportKind::Udp), Some(ip)) = (transport, address) {
                if ip.is_unspecified() {
                    // A wildcard UDP socket answers from whatever source address the kernel's
                    // route picks; on a host with several addresses that is not the address the
                    // phone sent to, and NATs and phones drop such answers.
                    self.issue(
                        &format!("{path}.address"),
                        "UDP needs a specific address (a wildcard UDP socket may answer from another address); add one [[listen]] per address",
                        Some(&Value::String(ip.to_string())),
                    );
                }
            }
            if let (Some(transport), Some(ip), Some(port)) = (transport, address, port) {
                let l = Listen { transport, addr: SocketAddr::new(ip, port as u16) };
                if let Some(j) = out.iter().position(|o| *o == l) {
                    self.issue(&path, format!("duplicates listen[{j}]"), None);
                } else {
                    out.push(l);
                }
            }
        }
        out
    }
}

const SIPS_UNSUPPORTED: &str = "sips: needs TLS, which sixgate does not speak yet: use sip: with ;transport=tcp or udp";

/// A telephone number as users and carriers write it: digits with an optional leading `+`.
pub fn is_number(s: &str) -> bool {
    let d = s.strip_prefix('+').unwrap_or(s);
    !d.is_empty() && d.len() <= 20 && d.bytes().all(|b| b.is_ascii_digit())
}

fn valid_domain(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid_and_loopback() {
        let c = Config::embedded();
        assert_eq!(c.listen.len(), 4);
        assert!(c.listen.iter().all(|l| l.addr.ip().is_loopback() && l.addr.port() == 5060));
        assert_eq!(c.advertise.ipv6, Some(Ipv6Addr::LOCALHOST));
    }

    fn problems(text: &str) -> Vec<String> {
        Config::from_toml(text).unwrap_err().0.iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn every_problem_is_named_by_key_path() {
        let p = problems(
            r#"
            [sip]
            domains = ["example.com", "bad domain"]
            colour = "blue"
            [[listen]]
            transport = "udp"
            address = "::1"
            port = 5060
            [[listen]]
            transport = "sctp"
            address = "::1"
            port = 5060
            [[listen]]
            transport = "udp"
            address = "127.0.0.1"
            port = 70000
            [limits]
            max_message_bytes = "big"
            [log]
            level = "loud"
            "#,
        );
        let want = [
            "sip.domains[1]: not a host name or IP address (got: \"bad domain\")",
            "sip.colour: unknown key",
            "listen[1].transport: must be \"udp\" or \"tcp\" (got: \"sctp\")",
            "listen[2].port: out of range 1..=65535 (got: 70000)",
            "limits.max_message_bytes: must be an integer (got: \"big\")",
            "log.level: must be one of error, warn, info, debug, trace (got: \"loud\")",
        ];
        for w in want {
            assert!(p.iter().any(|x| x.starts_with(w)), "missing {w:?} in {p:#?}");
        }
    }

    #[test]
    fn unspecified_listener_needs_advertise() {
        let p = problems("[sip]\ndomains=[\"a.example\"]\n[[listen]]\ntransport=\"tcp\"\naddress=\"::\"\nport=5060\n");
        assert_eq!(p, vec!["advertise.ipv6: required: listen[0] is bound to the unspecified address"]);
        let p = problems("[sip]\ndomains=[\"a.example\"]\n[advertise]\nipv4=\"192.0.2.1\"\n[[listen]]\ntransport=\"udp\"\naddress=\"0.0.0.0\"\nport=5060\n");
        assert_eq!(
            p,
            vec!["listen[0].address: UDP needs a specific address (a wildcard UDP socket may answer from another address); add one [[listen]] per address (got: \"0.0.0.0\")"]
        );
    }

    #[test]
    fn media_addresses_are_never_link_local_and_buffers_are_sizes() {
        let base = "[sip]\ndomains=[\"a.example\"]\n[[listen]]\ntransport=\"udp\"\naddress=\"::1\"\nport=5060\n[media]\n";
        let p = problems(&format!("{base}ipv6 = \"fe80::1\"\nsocket_recv_buffer = 12\n"));
        assert!(p.iter().any(|x| x.starts_with("media.ipv6: must not be link-local")), "{p:?}");
        assert!(p.iter().any(|x| x.starts_with("media.socket_recv_buffer: out of range")), "{p:?}");
        let c = Config::from_toml(&format!("{base}socket_recv_buffer = 4194304\n")).unwrap();
        assert_eq!((c.media.socket_recv_buffer, c.media.socket_send_buffer), (Some(4_194_304), None));
        assert_eq!(crate::media::relay_config(&c.media).unwrap().socket_recv_buffer, Some(4_194_304));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let p = problems("[sip]\ndomains = [\n");
        assert!(p[0].starts_with("(file): TOML syntax"), "{p:?}");
    }

    #[test]
    fn duplicates_and_missing_keys() {
        let p = problems("[sip]\ndomains=[\"a\"]\n[[listen]]\ntransport=\"tcp\"\naddress=\"::1\"\nport=5060\n[[listen]]\ntransport=\"tcp\"\naddress=\"::1\"\nport=5060\n[[listen]]\naddress=\"x\"\n");
        assert!(p.contains(&"listen[1]: duplicates listen[0]".to_string()), "{p:?}");
        assert!(p.contains(&"listen[2].transport: missing".to_string()), "{p:?}");
        assert!(p.contains(&"listen[2].address: not an IP address literal (got: \"x\")".to_string()), "{p:?}");
        assert!(p.contains(&"listen[2].port: missing".to_string()), "{p:?}");
    }
}
