//! Brute-force protection: failed authentications are counted per source network (an IPv4
//! address or an IPv6 /64: one attacker holds the whole /64), and a source past the threshold
//! gets 403 without a challenge for a cool-down period. Sans-IO: time comes in as an argument.
//! Must never: grow without bound (a spoofed-source flood), or ban on a single mistake.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

struct Record {
    failures: u32,
    window_start: Instant,
    banned_until: Option<Instant>,
}

/// Failure counts and bans by source network.
pub struct Bans {
    threshold: u32,
    window: Duration,
    ban: Duration,
    by_source: HashMap<IpAddr, Record>,
}

/// Sources tracked at most; past it the records with no ban are dropped first.
const MAX_SOURCES: usize = 100_000;

impl Bans {
    /// `threshold` failures within `window` ban for `ban`; a threshold of 0 disables bans.
    pub fn new(threshold: u32, window: Duration, ban: Duration) -> Bans {
        Bans { threshold, window, ban, by_source: HashMap::new() }
    }

    /// New thresholds (a reload); bans in force run their course.
    pub fn configure(&mut self, threshold: u32, window: Duration, ban: Duration) {
        (self.threshold, self.window, self.ban) = (threshold, window, ban);
    }

    /// Whether `source` is banned at `now`.
    pub fn is_banned(&self, now: Instant, source: IpAddr) -> bool {
        let key = crate::transport::source_key(source);
        self.by_source.get(&key).and_then(|r| r.banned_until).is_some_and(|t| now < t)
    }

    /// Counts a failure; returns the banned network when this failure starts a ban (for the
    /// one log line per ban).
    pub fn failed(&mut self, now: Instant, source: IpAddr) -> Option<IpAddr> {
        if self.threshold == 0 {
            return None;
        }
        let key = crate::transport::source_key(source);
        if self.by_source.len() >= MAX_SOURCES && !self.by_source.contains_key(&key) {
            self.prune(now);
            if self.by_source.len() >= MAX_SOURCES {
                self.by_source.retain(|_, r| r.banned_until.is_some());
            }
        }
        let r = self.by_source.entry(key).or_insert(Record { failures: 0, window_start: now, banned_until: None });
        if now.saturating_duration_since(r.window_start) > self.window {
            r.failures = 0;
            r.window_start = now;
        }
        r.failures += 1;
        if r.failures >= self.threshold && r.banned_until.is_none_or(|t| now >= t) {
            r.banned_until = Some(now + self.ban);
            r.failures = 0;
            r.window_start = now;
            return Some(key);
        }
        None
    }

    /// Drops records whose window and ban are over.
    pub fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.by_source.retain(|_, r| r.banned_until.is_some_and(|t| now < t) || now.saturating_duration_since(r.window_start) <= window);
    }

    pub fn tracked(&self) -> usize {
        self.by_source.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_bans_the_network_for_the_cool_down() {
        let t0 = Instant::now();
        let mut b = Bans::new(3, Duration::from_secs(60), Duration::from_secs(300));
        let a: IpAddr = "2001:db8:1:2::10".parse().unwrap();
        let same64: IpAddr = "2001:db8:1:2::99".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::10".parse().unwrap();
        assert_eq!(b.failed(t0, a), None);
        assert_eq!(b.failed(t0, same64), None);
        assert!(!b.is_banned(t0, a));
        assert_eq!(b.failed(t0, a), Some("2001:db8:1:2::".parse().unwrap()), "third failure in the /64 bans it, once");
        assert!(b.is_banned(t0, same64));
        assert!(!b.is_banned(t0, other));
        assert_eq!(b.failed(t0 + Duration::from_secs(1), a), None, "no second log line while banned");
        assert!(!b.is_banned(t0 + Duration::from_secs(301), a), "the ban ends");
        // Failures spread wider than the window never ban.
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..10 {
            assert_eq!(b.failed(t0 + Duration::from_secs(61 * i), v4), None);
        }
        b.prune(t0 + Duration::from_secs(2000));
        assert_eq!(b.tracked(), 0);
        let mut off = Bans::new(0, Duration::from_secs(60), Duration::from_secs(300));
        for _ in 0..100 {
            assert_eq!(off.failed(t0, v4), None);
        }
    }
}
