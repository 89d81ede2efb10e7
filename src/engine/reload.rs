//! Config reload (`sixgate ctl reload`, SIGHUP): the engine takes a new, already validated
//! config without losing a call, a transaction or a registration. Users, carriers, routing,
//! limits, timers, auth, registrar and media policy apply at once (to new requests; what is
//! under way keeps what it started with); what the engine cannot change in place (listeners,
//! advertised addresses, relay addresses and ports, state, metrics, DNS servers) is reported as
//! needing a restart, and the running values stay.
//!
//! Carriers keep their index (dialogs, transactions and timers refer to carriers by index): a
//! changed carrier is replaced in place, a new one is appended, a removed one stays as a retired
//! slot that routes nothing, matches no source and is not probed.
//!
//! Must never: drop a dialog, a binding or a transaction; leave a removed carrier routable.

use super::{Engine, TimerRef};
use crate::config::Config;
use std::time::{Duration, Instant};

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Sections whose new values are in force.
    pub applied: Vec<String>,
    /// Changed settings that only a restart applies (the running values stay).
    pub restart_needed: Vec<String>,
}

/// The config in force after a reload: `new`, except what only a restart applies, which keeps
/// its running value (so the next reload still reports it).
pub fn in_force(old: &Config, new: &Config) -> Config {
    let relay = if (old.media.relay == crate::config::RelayMode::Never) != (new.media.relay == crate::config::RelayMode::Never) { old.media.relay } else { new.media.relay };
    Config {
        listen: old.listen.clone(),
        advertise: old.advertise.clone(),
        state_dir: old.state_dir.clone(),
        store: old.store,
        call_records: old.call_records.clone(),
        metrics_listen: old.metrics_listen,
        dns: old.dns.clone(),
        log_level: old.log_level.clone(),
        auth: crate::config::AuthConfig { nonce_lifetime_secs: old.auth.nonce_lifetime_secs, ..new.auth.clone() },
        media: crate::config::MediaConfig { relay, end_call_on_timeout: new.media.end_call_on_timeout, one_way_audio_secs: new.media.one_way_audio_secs, ..old.media.clone() },
        ..new.clone()
    }
}

impl Engine {
    /// Applies `new` (validated by [`Config::from_toml`]); `old` is the config in force.
    pub fn reconfigure(&mut self, now: Instant, old: &Config, new: &Config) -> Reloaded {
        let mut r = Reloaded::default();
        let dbg = |v: &dyn std::fmt::Debug| format!("{v:?}");
        let mut note = |changed: bool, what: &str, restart: bool| {
            if changed {
                if restart {
                    r.restart_needed.push(what.to_string());
                } else {
                    r.applied.push(what.to_string());
                }
            }
        };
        // Bound sockets and durable state: a restart only.
        note(old.listen != new.listen, "listen", true);
        note(dbg(&old.advertise) != dbg(&new.advertise), "advertise", true);
        let relay_part = |m: &crate::config::MediaConfig| dbg(&(m.ipv6, m.ipv4, m.ports_v6, m.ports_v4, &m.engine, &m.cpus, m.socket_recv_buffer, m.socket_send_buffer, m.media_timeout_secs));
        note(relay_part(&old.media) != relay_part(&new.media), "media (relay addresses, ports, engine, cpus, buffers, media_timeout_secs)", true);
        note(old.media.relay != new.media.relay && (old.media.relay == crate::config::RelayMode::Never || new.media.relay == crate::config::RelayMode::Never), "media.relay (starting or stopping the relay)", true);
        note(old.state_dir != new.state_dir || old.store != new.store || old.call_records != new.call_records, "state", true);
        note(old.metrics_listen != new.metrics_listen, "metrics", true);
        note(dbg(&old.dns) != dbg(&new.dns), "dns", true);
        note(old.log_level != new.log_level, "log", true);
        note(old.auth.nonce_lifetime_secs != new.auth.nonce_lifetime_secs, "auth.nonce_lifetime_secs", true);

        // In place.
        note(old.sip.domains != new.sip.domains || old.sip.server_header != new.sip.server_header, "sip", false);
        self.domains = new.sip.domains.clone();
        self.server_header = new.sip.server_header.clone();
        note(dbg(&old.limits) != dbg(&new.limits), "limits", false);
        self.limits = new.limits.clone();
        note(dbg(&old.timers) != dbg(&new.timers), "timers", false);
        self.timing = crate::transaction::Timing::from(&new.timers);
        self.timer_c = new.timers.timer_c;
        let bans = |a: &crate::config::AuthConfig| (a.ban_failures, a.ban_window_secs, a.ban_secs);
        if bans(&old.auth) != bans(&new.auth) {
            // Current bans are kept until they end; the new thresholds judge new failures.
            self.bans.configure(new.auth.ban_failures, Duration::from_secs(new.auth.ban_window_secs), Duration::from_secs(new.auth.ban_secs));
        }
        note(dbg(&old.auth) != dbg(&new.auth) && old.auth.nonce_lifetime_secs == new.auth.nonce_lifetime_secs, "auth", false);
        self.auth = crate::config::AuthConfig { nonce_lifetime_secs: self.auth.nonce_lifetime_secs, ..new.auth.clone() };
        note(dbg(&old.users) != dbg(&new.users), "users", false);
        note(dbg(&old.carriers) != dbg(&new.carriers), "carriers", false);
        note(dbg(&old.routing) != dbg(&new.routing), "routing", false);
        self.max_branches = new.routing.max_branches;
        self.router.reload(new);
        note(dbg(&old.registrar) != dbg(&new.registrar), "registrar", false);
        self.registrar.set_config(new.registrar.clone());
        note(old.media.end_call_on_timeout != new.media.end_call_on_timeout || old.media.one_way_audio_secs != new.media.one_way_audio_secs, "media (end_call_on_timeout, one_way_audio_secs)", false);
        if old.media.relay == new.media.relay || (old.media.relay != crate::config::RelayMode::Never && new.media.relay != crate::config::RelayMode::Never) {
            note(old.media.relay != new.media.relay, "media.relay", false);
            self.media.mode = new.media.relay;
        }
        self.media.end_call_on_timeout = new.media.end_call_on_timeout;
        self.media.one_way_after = Duration::from_secs(new.media.one_way_audio_secs);

        // Timers that depend on the config: probes of new carriers, the media poll.
        let probed: Vec<(usize, u64)> = self.router.carriers().iter().enumerate().map(|(i, c)| (i, c.probe_interval_secs)).collect();
        for (i, interval) in probed {
            let scheduled = self.scheduled.contains_key(&TimerRef::Probe(i));
            if interval > 0 && !scheduled {
                let jitter = Duration::from_millis(self.rng.next_u64() % 1000);
                self.schedule(TimerRef::Probe(i), Some(now + jitter));
            } else if interval == 0 && scheduled {
                self.schedule(TimerRef::Probe(i), None);
                self.router.set_up(i, true);
            }
        }
        let polling = self.media.one_way_after > Duration::ZERO && self.media.mode != crate::config::RelayMode::Never;
        match (polling, self.scheduled.contains_key(&TimerRef::MediaPoll)) {
            (true, false) => self.schedule(TimerRef::MediaPoll, Some(now + super::calls::MEDIA_POLL)),
            (false, true) => self.schedule(TimerRef::MediaPoll, None),
            _ => {}
        }
        r
    }
}
