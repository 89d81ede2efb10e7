//! RFC 3263 §4 server location: a SIP URI's host, port and transport become an ordered list of
//! (transport, address) targets via NAPTR -> SRV -> AAAA/A, using hickory-resolver.
//!
//! Runs in the tokio driver, never in the sans-IO engine. It must never block a thread (every
//! lookup is async and bounded by the resolver timeout) and keeps no cache of its own: the
//! engine caches a [`Resolution`] for its `ttl`.

use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;

use crate::config::TransportKind;

/// What to resolve: a SIP URI's host plus what the URI said explicitly.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Query {
    pub host: String,
    pub port: Option<u16>,
    pub transport: Option<TransportKind>,
    pub secure: bool,
}

/// One place to send to, in the order to try them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub transport: TransportKind,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub targets: Vec<Target>,
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The name does not exist or has no usable records (NXDOMAIN / NODATA / bad name).
    #[error("DNS: not found: {0}")]
    NotFound(String),
    /// The lookup itself failed (timeout, SERVFAIL, REFUSED, network error, bad config).
    #[error("DNS: lookup failed: {0}")]
    Failed(String),
}

/// Per-query timeout and total tries, as RFC 3263 lookups sit on a call's setup path.
const TIMEOUT: Duration = Duration::from_secs(2);
const TRIES: usize = 2;
const MAX_TTL: u32 = 3600;
const MIN_TTL: u32 = 1;

/// An RFC 3263 resolver. Cheap to clone (shares the name server pool).
#[derive(Clone, Debug)]
pub struct Resolver {
    inner: TokioResolver,
}

/// Addresses found for some step, with the smallest TTL among the records that produced them.
struct Found {
    targets: Vec<Target>,
    ttl: u32,
}

impl Resolver {
    /// `servers` empty = system config (/etc/resolv.conf); else these "ip:port" name servers
    /// over UDP (+TCP when truncated), no search domains, no system hosts file.
    pub fn new(servers: &[SocketAddr]) -> Result<Resolver, DnsError> {
        Self::with_timeout(servers, TIMEOUT, TRIES)
    }

    fn with_timeout(
        servers: &[SocketAddr],
        timeout: Duration,
        tries: usize,
    ) -> Result<Resolver, DnsError> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| DnsError::Failed(format!("system resolver config: {e}")))?
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    // NameServerConfig/ConnectionConfig are #[non_exhaustive]: build, then set port.
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for c in &mut ns.connections {
                        c.port = s.port();
                    }
                    ns
                })
                .collect();
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], name_servers),
                TokioRuntimeProvider::default(),
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = tries.saturating_sub(1); // hickory counts retries after the first try
        opts.cache_size = 0; // no caching here; the engine caches by ttl
        let inner = builder
            .build()
            .map_err(|e| DnsError::Failed(format!("resolver setup: {e}")))?;
        Ok(Resolver { inner })
    }

    /// Resolve per RFC 3263 §4 into targets in the order to try them.
    ///
    /// SRV records of one priority are ordered by weight descending (then answer order): a
    /// deterministic stand-in for RFC 2782's weighted random pick. `secure` (sips) means TCP
    /// (we have no TLS transport), whatever transport the URI named.
    pub async fn resolve(&self, q: &Query) -> Result<Resolution, DnsError> {
        let host = q.host.as_str();
        let default_port = if q.secure { 5061 } else { 5060 };
        let transport = if q.secure {
            TransportKind::Tcp
        } else {
            q.transport.unwrap_or(TransportKind::Udp)
        };

        // IP literal: no DNS at all.
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Resolution {
                targets: vec![Target {
                    transport,
                    addr: SocketAddr::new(ip, q.port.unwrap_or(default_port)),
                }],
                ttl: Duration::from_secs(MAX_TTL.into()),
            });
        }
        let name = parse_name(host)?;
        let not_found = || DnsError::NotFound(format!("no SIP targets for {host}"));

        // Explicit port: addresses only.
        if let Some(port) = q.port {
            let found = self.addresses(name, port, transport).await?;
            return finish(found, not_found);
        }

        // Explicit transport: SRV, else addresses on the default port.
        if q.transport.is_some() {
            let found = match self
                .srv(srv_name(&name, transport, q.secure)?, transport)
                .await?
            {
                Some(found) => found,
                None => self.addresses(name, default_port, transport).await?,
            };
            return finish(found, not_found);
        }

        // Neither: NAPTR, then SRV for UDP and TCP (sips: TCP), then addresses on the default
        // port and transport.
        let mut ttl = MAX_TTL;
        let chosen = self.naptr(&name, q.secure).await?;
        if let Some((rules, naptr_ttl)) = chosen {
            ttl = ttl.min(naptr_ttl);
            let lookups = rules
                .into_iter()
                .map(|(t, replacement)| self.srv(replacement, t))
                .collect();
            let found = merge(join_all(lookups).await)?;
            if !found.targets.is_empty() {
                return finish(
                    Found {
                        targets: found.targets,
                        ttl: found.ttl.min(ttl),
                    },
                    not_found,
                );
            }
            // NAPTR pointed nowhere usable: carry on as if there were no NAPTR records.
        }
        let services: &[TransportKind] = if q.secure {
            &[TransportKind::Tcp]
        } else {
            &[TransportKind::Udp, TransportKind::Tcp]
        };
        let lookups = services
            .iter()
            .map(|&t| Ok::<_, DnsError>(self.srv(srv_name(&name, t, q.secure)?, t)))
            .collect::<Result<Vec<_>, _>>()?;
        let srvs = join_all(lookups).await;
        if srvs.iter().any(|r| !matches!(r, Ok(None))) {
            let found = merge(srvs)?;
            return finish(
                Found {
                    targets: found.targets,
                    ttl: found.ttl.min(ttl),
                },
                not_found,
            );
        }
        let found = self.addresses(name, default_port, transport).await?;
        finish(
            Found {
                targets: found.targets,
                ttl: found.ttl.min(ttl),
            },
            not_found,
        )
    }

    /// NAPTR for `name`: the SIP rules we can use, ordered, each as (transport, SRV name), plus
    /// the NAPTR TTL. `None` if the name has no NAPTR records at all.
    async fn naptr(
        &self,
        name: &Name,
        secure: bool,
    ) -> Result<Option<(Vec<(TransportKind, Name)>, u32)>, DnsError> {
        let Some(records) = self.lookup(name.clone(), RecordType::NAPTR).await? else {
            return Ok(None);
        };
        let ttl = min_ttl(&records);
        let mut rules: Vec<(u16, u16, TransportKind, Name)> = records
            .iter()
            .filter_map(|r| match &r.data {
                RData::NAPTR(n) => Some(n),
                _ => None,
            })
            .filter(|n| n.flags.eq_ignore_ascii_case(b"s") && !n.replacement.is_root())
            .filter_map(|n| {
                let t = naptr_transport(&n.services, secure)?;
                Some((n.order, n.preference, t, n.replacement.clone()))
            })
            .collect();
        // Stable sort: equal (order, preference) keep answer order.
        rules.sort_by_key(|&(order, pref, ..)| (order, pref));
        let rules = rules.into_iter().map(|(_, _, t, n)| (t, n)).collect();
        Ok(Some((rules, ttl)))
    }

    /// SRV for `name`: `None` if there are no SRV records, else the targets' addresses in SRV
    /// order (possibly empty, e.g. target "." = service decidedly not available).
    async fn srv(&self, name: Name, transport: TransportKind) -> Result<Option<Found>, DnsError> {
        let Some(records) = self.lookup(name, RecordType::SRV).await? else {
            return Ok(None);
        };
        let ttl = min_ttl(&records);
        let mut srvs: Vec<_> = records
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) if !s.target.is_root() => Some(s),
                _ => None,
            })
            .collect();
        srvs.sort_by_key(|s| (s.priority, std::cmp::Reverse(s.weight)));
        let lookups = srvs
            .iter()
            .map(|s| self.addresses(s.target.clone(), s.port, transport))
            .collect();
        let found = merge(
            join_all(lookups)
                .await
                .into_iter()
                .map(|r| r.map(Some))
                .collect(),
        )?;
        Ok(Some(Found {
            targets: found.targets,
            ttl: found.ttl.min(ttl),
        }))
    }

    /// AAAA then A for `name`, all on `port`. Empty if the name has neither; a failure of one
    /// family is tolerated when the other has addresses.
    async fn addresses(
        &self,
        name: Name,
        port: u16,
        transport: TransportKind,
    ) -> Result<Found, DnsError> {
        let lookups = vec![
            self.lookup(name.clone(), RecordType::AAAA),
            self.lookup(name, RecordType::A),
        ];
        let mut found = Found {
            targets: Vec::new(),
            ttl: MAX_TTL,
        };
        let mut failure = None;
        for result in join_all(lookups).await {
            match result {
                Ok(Some(records)) => {
                    found.ttl = found.ttl.min(min_ttl(&records));
                    found.targets.extend(records.iter().filter_map(|r| {
                        let ip = match r.data {
                            RData::AAAA(a) => IpAddr::V6(a.0),
                            RData::A(a) => IpAddr::V4(a.0),
                            _ => return None,
                        };
                        Some(Target {
                            transport,
                            addr: SocketAddr::new(ip, port),
                        })
                    }));
                }
                Ok(None) => {}
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) if found.targets.is_empty() => Err(e),
            _ => Ok(found),
        }
    }

    /// One query. `Ok(None)` = NXDOMAIN or no records of this type; `Err` = the lookup failed.
    async fn lookup(&self, name: Name, rtype: RecordType) -> Result<Option<Vec<Record>>, DnsError> {
        match self.inner.lookup(name.clone(), rtype).await {
            Ok(lookup) => {
                let records = lookup.answers().to_vec();
                Ok((!records.is_empty()).then_some(records))
            }
            Err(e) if e.is_no_records_found() => Ok(None),
            Err(e) => Err(failed(&name, rtype, &e)),
        }
    }
}

fn failed(name: &Name, rtype: RecordType, e: &NetError) -> DnsError {
    DnsError::Failed(format!("{rtype} {name}: {e}"))
}

fn parse_name(host: &str) -> Result<Name, DnsError> {
    if host.is_empty() || host.starts_with('[') {
        return Err(DnsError::NotFound(format!("invalid host name {host:?}")));
    }
    Name::from_utf8(host)
        .map_err(|e| DnsError::NotFound(format!("invalid host name {host:?}: {e}")))
}

fn srv_name(host: &Name, transport: TransportKind, secure: bool) -> Result<Name, DnsError> {
    let prefix = match (secure, transport) {
        (true, _) => "_sips._tcp",
        (false, TransportKind::Udp) => "_sip._udp",
        (false, TransportKind::Tcp) => "_sip._tcp",
    };
    let prefix = Name::from_ascii(prefix).expect("static SRV prefix is a valid name");
    prefix
        .append_name(host)
        .map_err(|e| DnsError::NotFound(format!("SRV name for {host}: {e}")))
}

/// NAPTR service field -> transport: SIP+D2U / SIP+D2T for sip, only SIPS+D2T for sips.
fn naptr_transport(services: &[u8], secure: bool) -> Option<TransportKind> {
    if secure {
        services
            .eq_ignore_ascii_case(b"SIPS+D2T")
            .then_some(TransportKind::Tcp)
    } else if services.eq_ignore_ascii_case(b"SIP+D2U") {
        Some(TransportKind::Udp)
    } else if services.eq_ignore_ascii_case(b"SIP+D2T") {
        Some(TransportKind::Tcp)
    } else {
        None
    }
}

fn min_ttl(records: &[Record]) -> u32 {
    records.iter().map(|r| r.ttl).min().unwrap_or(MAX_TTL)
}

/// Concatenate step results in order; a failed step is tolerated if any other found targets.
fn merge(results: Vec<Result<Option<Found>, DnsError>>) -> Result<Found, DnsError> {
    let mut found = Found {
        targets: Vec::new(),
        ttl: MAX_TTL,
    };
    let mut failure = None;
    for result in results {
        match result {
            Ok(Some(f)) => {
                found.ttl = found.ttl.min(f.ttl);
                found.targets.extend(f.targets);
            }
            Ok(None) => {}
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    match failure {
        Some(e) if found.targets.is_empty() => Err(e),
        _ => Ok(found),
    }
}

fn finish(found: Found, not_found: impl FnOnce() -> DnsError) -> Result<Resolution, DnsError> {
    let mut targets: Vec<Target> = Vec::with_capacity(found.targets.len());
    for t in found.targets {
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    if targets.is_empty() {
        return Err(not_found());
    }
    let ttl = found.ttl.clamp(MIN_TTL, MAX_TTL);
    Ok(Resolution {
        targets,
        ttl: Duration::from_secs(ttl.into()),
    })
}

/// Run futures concurrently on the current task; outputs in input order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use TransportKind::{Tcp, Udp};

    const DNSMASQ: &str = "/usr/sbin/dnsmasq";
    /// Upper bound for any single resolve in these tests.
    const BOUND: Duration = Duration::from_secs(10);

    /// The test zone. Every address is loopback; nothing here is ever contacted.
    const RECORDS: &[&str] = &[
        "--local=/sixgate.test/",
        "--local-ttl=600",
        // NAPTR -> SRV -> AAAA/A. Order 1 is not an "s" rule; order 5 is sips only.
        "--naptr-record=naptr.sixgate.test,20,50,s,SIP+D2U,,_sip._udp.naptr.sixgate.test",
        "--naptr-record=naptr.sixgate.test,10,50,s,SIP+D2T,,_sip._tcp.naptr.sixgate.test",
        "--naptr-record=naptr.sixgate.test,5,50,s,SIPS+D2T,,_sips._tcp.naptr.sixgate.test",
        "--naptr-record=naptr.sixgate.test,1,50,u,E2U+sip,!^.*$!sip:info@sixgate.test!",
        "--srv-host=_sip._tcp.naptr.sixgate.test,tcp1.sixgate.test,5070",
        "--srv-host=_sip._udp.naptr.sixgate.test,udp1.sixgate.test,5080",
        "--srv-host=_sips._tcp.naptr.sixgate.test,tls1.sixgate.test,5061",
        "--host-record=tcp1.sixgate.test,127.0.0.2,::1",
        "--host-record=udp1.sixgate.test,127.0.0.3,300",
        "--host-record=tls1.sixgate.test,127.0.0.4",
        // SRV priorities and weights (listed out of order), no NAPTR.
        "--srv-host=_sip._udp.prio.sixgate.test,low.sixgate.test,5062,20,0",
        "--srv-host=_sip._udp.prio.sixgate.test,high.sixgate.test,5064,10,0",
        "--srv-host=_sip._udp.prio.sixgate.test,light.sixgate.test,5066,30,10",
        "--srv-host=_sip._udp.prio.sixgate.test,heavy.sixgate.test,5068,30,90",
        "--srv-host=_sip._tcp.prio.sixgate.test,high.sixgate.test,5070,10,0",
        "--host-record=low.sixgate.test,127.0.0.10",
        "--host-record=high.sixgate.test,127.0.0.11",
        "--host-record=light.sixgate.test,127.0.0.12",
        "--host-record=heavy.sixgate.test,127.0.0.13",
        // A host with NAPTR, SRV (both transports) and its own A record.
        "--naptr-record=both.sixgate.test,10,50,s,SIP+D2U,,_sip._udp.both.sixgate.test",
        "--srv-host=_sip._udp.both.sixgate.test,udp1.sixgate.test,5080",
        "--srv-host=_sip._tcp.both.sixgate.test,tcp1.sixgate.test,5070",
        "--host-record=both.sixgate.test,127.0.0.9",
        // Only an A record.
        "--host-record=plain.sixgate.test,127.0.0.5,42",
    ];

    /// A dnsmasq serving `RECORDS` on 127.0.0.1; killed on drop.
    struct Dnsmasq {
        child: Child,
        addr: SocketAddr,
    }

    impl Drop for Dnsmasq {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp");
        let port = udp.local_addr().unwrap().port();
        // dnsmasq needs the TCP port too.
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(_) => port,
            Err(_) => free_port(),
        }
    }

    fn dnsmasq() -> Dnsmasq {
        assert!(
            std::path::Path::new(DNSMASQ).exists(),
            "{DNSMASQ} is missing: these tests need a real DNS server; \
             ./scripts/test.sh installs it (Debian package dnsmasq-base)"
        );
        let mut last_err = String::new();
        // The port can be taken between probing and dnsmasq's bind; retry a few times.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(DNSMASQ)
                .args([
                    "--no-daemon",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                    &format!("--port={port}"),
                ])
                .args(RECORDS)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {DNSMASQ}: {e}"));
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait().unwrap() {
                    let mut stderr = String::new();
                    use std::io::Read;
                    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
                    last_err = format!("dnsmasq exited ({status}): {stderr}");
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Dnsmasq { child, addr };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            if last_err.is_empty() {
                last_err = "dnsmasq did not listen within 5 s".into();
            }
        }
        panic!("could not start dnsmasq: {last_err}");
    }

    fn q(host: &str, port: Option<u16>, transport: Option<TransportKind>, secure: bool) -> Query {
        Query {
            host: host.into(),
            port,
            transport,
            secure,
        }
    }

    fn t(transport: TransportKind, addr: &str) -> Target {
        Target {
            transport,
            addr: addr.parse().unwrap(),
        }
    }

    async fn resolve(r: &Resolver, q: &Query) -> Result<Resolution, DnsError> {
        tokio::time::timeout(BOUND, r.resolve(q))
            .await
            .unwrap_or_else(|_| panic!("resolve {q:?} took longer than {BOUND:?}"))
    }

    async fn targets(r: &Resolver, q: &Query) -> Vec<Target> {
        match resolve(r, q).await {
            Ok(res) => res.targets,
            Err(e) => panic!("resolve {q:?}: {e}"),
        }
    }

    #[test]
    fn resolve_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let r = Resolver::new(&["127.0.0.1:9".parse().unwrap()]).unwrap();
        let query = q("example.com", None, None, false);
        assert_send(&r.resolve(&query));
    }

    #[tokio::test]
    async fn ip_literals_need_no_dns() {
        // Port 9 (discard) on loopback: any query sent would time out, failing the expectations.
        let r = Resolver::new(&["127.0.0.1:9".parse().unwrap()]).unwrap();
        let one = |res: Resolution| {
            assert_eq!(res.ttl, Duration::from_secs(3600));
            assert_eq!(res.targets.len(), 1);
            res.targets[0]
        };
        let cases = [
            (q("192.0.2.1", None, None, false), t(Udp, "192.0.2.1:5060")),
            (
                q("192.0.2.1", Some(5080), Some(Tcp), false),
                t(Tcp, "192.0.2.1:5080"),
            ),
            (q("192.0.2.1", None, None, true), t(Tcp, "192.0.2.1:5061")),
            // sips forces TCP even if the URI said udp.
            (
                q("192.0.2.1", None, Some(Udp), true),
                t(Tcp, "192.0.2.1:5061"),
            ),
            (
                q("[2001:db8::1]", None, None, false),
                t(Udp, "[2001:db8::1]:5060"),
            ),
            (
                q("2001:db8::1", Some(5070), Some(Tcp), false),
                t(Tcp, "[2001:db8::1]:5070"),
            ),
            (q("[::1]", None, Some(Tcp), true), t(Tcp, "[::1]:5061")),
        ];
        for (query, want) in cases {
            assert_eq!(one(resolve(&r, &query).await.unwrap()), want, "{query:?}");
        }
        let v6 = resolve(&r, &q("[2001:db8::1]", None, None, false))
            .await
            .unwrap();
        assert_eq!(
            v6.targets[0].addr.ip(),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))
        );
        for bad in ["", "[not-an-ip]", "[192.0.2.1"] {
            assert!(
                matches!(
                    resolve(&r, &q(bad, None, None, false)).await,
                    Err(DnsError::NotFound(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn naptr_srv_address_chain() {
        let dns = dnsmasq();
        let r = Resolver::new(&[dns.addr]).unwrap();
        let res = resolve(&r, &q("naptr.sixgate.test", None, None, false))
            .await
            .unwrap();
        // Order 10 (D2T) before order 20 (D2U); sips and non-"s" rules skipped; AAAA before A.
        assert_eq!(
            res.targets,
            [
                t(Tcp, "[::1]:5070"),
                t(Tcp, "127.0.0.2:5070"),
                t(Udp, "127.0.0.3:5080")
            ]
        );
        // The smallest TTL used: udp1's A record (300) under NAPTR/SRV at local-ttl 600.
        assert_eq!(res.ttl, Duration::from_secs(300));
        // sips takes only the SIPS+D2T rule.
        assert_eq!(
            targets(&r, &q("naptr.sixgate.test", None, None, true)).await,
            [t(Tcp, "127.0.0.4:5061")]
        );
        // NAPTR also governs a host that has SRV for both transports.
        assert_eq!(
            targets(&r, &q("both.sixgate.test", None, None, false)).await,
            [t(Udp, "127.0.0.3:5080")]
        );
    }

    #[tokio::test]
    async fn srv_priority_then_weight_udp_before_tcp() {
        let dns = dnsmasq();
        let r = Resolver::new(&[dns.addr]).unwrap();
        // No NAPTR: _sip._udp then _sip._tcp. Priority ascending, weight descending.
        assert_eq!(
            targets(&r, &q("prio.sixgate.test", None, None, false)).await,
            [
                t(Udp, "127.0.0.11:5064"),
                t(Udp, "127.0.0.10:5062"),
                t(Udp, "127.0.0.13:5068"),
                t(Udp, "127.0.0.12:5066"),
                t(Tcp, "127.0.0.11:5070"),
            ]
        );
        assert_eq!(
            targets(&r, &q("prio.sixgate.test", None, Some(Udp), false)).await,
            [
                t(Udp, "127.0.0.11:5064"),
                t(Udp, "127.0.0.10:5062"),
                t(Udp, "127.0.0.13:5068"),
                t(Udp, "127.0.0.12:5066"),
            ]
        );
    }

    #[tokio::test]
    async fn explicit_port_skips_naptr_and_srv() {
        let dns = dnsmasq();
        let r = Resolver::new(&[dns.addr]).unwrap();
        assert_eq!(
            targets(&r, &q("both.sixgate.test", Some(6000), None, false)).await,
            [t(Udp, "127.0.0.9:6000")]
        );
        assert_eq!(
            targets(&r, &q("both.sixgate.test", Some(6000), Some(Tcp), false)).await,
            [t(Tcp, "127.0.0.9:6000")]
        );
        assert_eq!(
            targets(&r, &q("tcp1.sixgate.test", Some(5090), None, false)).await,
            [t(Udp, "[::1]:5090"), t(Udp, "127.0.0.2:5090")]
        );
    }

    #[tokio::test]
    async fn explicit_transport_uses_that_srv() {
        let dns = dnsmasq();
        let r = Resolver::new(&[dns.addr]).unwrap();
        assert_eq!(
            targets(&r, &q("both.sixgate.test", None, Some(Tcp), false)).await,
            [t(Tcp, "[::1]:5070"), t(Tcp, "127.0.0.2:5070")]
        );
        assert_eq!(
            targets(&r, &q("both.sixgate.test", None, Some(Udp), false)).await,
            [t(Udp, "127.0.0.3:5080")]
        );
        // No SRV for the transport: the host's addresses on the default port.
        assert_eq!(
            targets(&r, &q("plain.sixgate.test", None, Some(Tcp), false)).await,
            [t(Tcp, "127.0.0.5:5060")]
        );
    }

    #[tokio::test]
    async fn no_naptr_no_srv_falls_back_to_addresses() {
        let dns = dnsmasq();
        let r = Resolver::new(&[dns.addr]).unwrap();
        let res = resolve(&r, &q("plain.sixgate.test", None, None, false))
            .await
            .unwrap();
        assert_eq!(res.targets, [t(Udp, "127.0.0.5:5060")]);
        assert_eq!(res.ttl, Duration::from_secs(42));
        assert_eq!(
            targets(&r, &q("plain.sixgate.test", None, None, true)).await,
            [t(Tcp, "127.0.0.5:5061")]
        );
    }

    #[tokio::test]
    async fn unknown_name_is_not_found() {
        let dns = dnsmasq();
        let r = Resolver::new(&[dns.addr]).unwrap();
        for query in [
            q("nothere.sixgate.test", None, None, false),
            q("nothere.sixgate.test", None, Some(Tcp), false),
            q("nothere.sixgate.test", Some(5060), None, false),
            q("nothere.sixgate.test", None, None, true),
        ] {
            let got = resolve(&r, &query).await;
            assert!(
                matches!(got, Err(DnsError::NotFound(_))),
                "{query:?}: {got:?}"
            );
        }
    }

    #[tokio::test]
    async fn server_errors_and_timeouts_are_failed() {
        // dnsmasq has no upstream for names outside its zone: it answers REFUSED.
        let dns = dnsmasq();
        let r = Resolver::new(&[dns.addr]).unwrap();
        let got = resolve(&r, &q("elsewhere.example", None, None, false)).await;
        assert!(matches!(got, Err(DnsError::Failed(_))), "{got:?}");

        // A name server that never answers (and refuses TCP): Failed, within the timeouts.
        let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let r = Resolver::with_timeout(
            &[silent.local_addr().unwrap()],
            Duration::from_millis(300),
            2,
        )
        .unwrap();
        let start = Instant::now();
        let got = resolve(&r, &q("plain.sixgate.test", None, None, false)).await;
        assert!(matches!(got, Err(DnsError::Failed(_))), "{got:?}");
        // Two tries of 300 ms each, not three (hickory's `attempts` counts retries).
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(550) && took < Duration::from_millis(850),
            "took {took:?}"
        );
    }
}
