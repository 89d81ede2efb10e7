//! Configuration: one TOML file parsed into typed, validated structs at start.
//!
//! The file is walked key by key (rather than deserialized in one go) so that *every* problem is
//! reported at once, each with its key path: `listen[2].port: out of range 1..=65535 (got: 70000)`.
//! Unknown keys are errors. With no file, the embedded defaults (`conf/sixgate.toml`, compiled
//! in) are used. Must never: start with a value it did not check.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use toml::{Table, Value};

/// The documented example config, which is also what runs when no file is given.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../../conf/sixgate.toml");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_tcp_connections: usize,
    pub max_tcp_connections_per_source: usize,
    pub tcp_idle_timeout_secs: u64,
    /// A TCP message that has begun must be complete within this many seconds (slowloris).
    pub tcp_message_timeout_secs: u64,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub sip: SipConfig,
    pub listen: Vec<Listen>,
    pub advertise: Advertise,
    pub limits: Limits,
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

    fn config(&mut self, root: &Table) -> Config {
        self.known_keys(root, "", &["sip", "listen", "advertise", "limits", "log"]);

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
        let mut advertise = Advertise { ipv6: None, ipv4: None };
        match self.ip(adv_t, "advertise", "ipv6") {
            Some(IpAddr::V6(a)) if !a.is_unspecified() => advertise.ipv6 = Some(a),
            Some(a) => self.issue("advertise.ipv6", "must be a specific IPv6 address", Some(&Value::String(a.to_string()))),
            None => {}
        }
        match self.ip(adv_t, "advertise", "ipv4") {
            Some(IpAddr::V4(a)) if !a.is_unspecified() => advertise.ipv4 = Some(a),
            Some(a) => self.issue("advertise.ipv4", "must be a specific IPv4 address", Some(&Value::String(a.to_string()))),
            None => {}
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
            self.known_keys(t, "limits", &["max_message_bytes", "max_tcp_connections", "max_tcp_connections_per_source", "tcp_idle_timeout_secs", "tcp_message_timeout_secs"]);
        }
        let limits = Limits {
            max_message_bytes: self.int(lim_t, "limits", "max_message_bytes", 1024..=65535).unwrap_or(65535) as usize,
            max_tcp_connections: self.int(lim_t, "limits", "max_tcp_connections", 1..=1_000_000).unwrap_or(10000) as usize,
            max_tcp_connections_per_source: self.int(lim_t, "limits", "max_tcp_connections_per_source", 1..=65535).unwrap_or(64) as usize,
            tcp_idle_timeout_secs: self.int(lim_t, "limits", "tcp_idle_timeout_secs", 10..=86400).unwrap_or(600) as u64,
            tcp_message_timeout_secs: self.int(lim_t, "limits", "tcp_message_timeout_secs", 1..=600).unwrap_or(30) as u64,
        };

        let log_t = self.section(root, "log");
        if let Some(t) = log_t {
            self.known_keys(t, "log", &["level"]);
        }
        let log_level = self.string(log_t, "log", "level").unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            self.issue("log.level", "must be one of error, warn, info, debug, trace", Some(&Value::String(log_level.clone())));
        }

        Config { sip: SipConfig { domains, server_header }, listen, advertise, limits, log_level }
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
