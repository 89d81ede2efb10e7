//! RFC 3261 §17 transactions, with RFC 6026's Accepted states: INVITE and non-INVITE, client and
//! server, as state enums that carry their own deadlines. Sans-IO: every method takes `now` and
//! returns what to send; the engine keeps the tables and the ordered deadline index.
//!
//! Retransmissions happen over unreliable transports only (UDP); over TCP the timers that wait
//! for retransmissions (D, I, J, K) are zero. Must never: read the clock, send by itself, or
//! keep a transaction alive past its last timer.

pub mod key;

use bytes::Bytes;
use std::time::{Duration, Instant};

pub use key::{ClientKey, ServerKey};

/// The timer bases (RFC 3261 §17.1.1.1, table 4).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Timing {
    /// 64*T1: Timers B, F, H, J, L and M.
    pub fn long(&self) -> Duration {
        self.t1 * 64
    }
}

impl From<&crate::config::Timers> for Timing {
    fn from(t: &crate::config::Timers) -> Timing {
        Timing { t1: t.t1, t2: t.t2, t4: t.t4 }
    }
}

/// INVITE or anything else: the two state machines of §17.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Invite,
    NonInvite,
}

/// A retransmission timer: when it fires next and the interval after that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retransmit {
    pub at: Instant,
    pub interval: Duration,
}

impl Retransmit {
    fn start(now: Instant, t1: Duration) -> Retransmit {
        Retransmit { at: now + t1, interval: t1 }
    }
    /// Doubles the interval, capped at `cap` (T2), and schedules the next firing.
    fn back_off(&mut self, now: Instant, cap: Option<Duration>) {
        self.interval = cap.map_or(self.interval * 2, |c| (self.interval * 2).min(c));
        self.at = now + self.interval;
    }
}

/// Server transaction states (§17.2.1, §17.2.2, RFC 6026 §7.1). Each carries its deadlines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE: request received, nothing sent yet.
    Trying,
    /// A provisional response was sent (INVITE: sent at once, the 100).
    Proceeding,
    /// INVITE after a 2xx (RFC 6026): absorbs retransmissions until Timer L.
    Accepted { until: Instant },
    /// A final response was sent. INVITE: retransmitted on Timer G until an ACK or Timer H.
    /// Non-INVITE: retransmitted on each request retransmission until Timer J.
    Completed { retransmit: Option<Retransmit>, until: Instant },
    /// INVITE: the ACK arrived; absorbs ACK retransmissions until Timer I.
    Confirmed { until: Instant },
    Terminated,
}

/// What the engine must do after a server transaction timer fired.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerFired {
    Nothing,
    /// Send the last response again (Timer G).
    Resend(Bytes),
    /// Timer H: the ACK never came. The transaction is over.
    AckTimeout,
    /// The transaction is over (Timers I, J, L).
    Done,
}

#[derive(Clone, Debug)]
pub struct ServerTxn {
    pub kind: Kind,
    pub state: ServerState,
    pub reliable: bool,
    pub last_response: Option<(u16, Bytes)>,
}

impl ServerTxn {
    pub fn new(kind: Kind, reliable: bool) -> ServerTxn {
        // An INVITE server transaction starts in Proceeding: the engine sends 100 at once.
        let state = if kind == Kind::Invite { ServerState::Proceeding } else { ServerState::Trying };
        ServerTxn { kind, state, reliable, last_response: None }
    }

    /// A response the TU wants sent. Returns false when the state does not allow it (a final
    /// response was already sent), so nothing must go out.
    pub fn respond(&mut self, now: Instant, status: u16, bytes: Bytes, t: &Timing) -> bool {
        let final_sent = matches!(self.state, ServerState::Completed { .. } | ServerState::Confirmed { .. } | ServerState::Terminated);
        let accepted = matches!(self.state, ServerState::Accepted { .. });
        if final_sent || (accepted && !(200..300).contains(&status)) {
            return false;
        }
        // A 2xx to an INVITE is never re-sent by us (RFC 6026: the UAS retransmits it end to
        // end), so it is not kept through the 32 s of Accepted.
        self.last_response = if self.kind == Kind::Invite && (200..300).contains(&status) { None } else { Some((status, bytes)) };
        if status < 200 {
            if !accepted {
                self.state = ServerState::Proceeding;
            }
            return !accepted;
        }
        self.state = match (self.kind, status) {
            // Further 2xx (forked answers) pass through while Accepted; Timer L keeps running.
            (Kind::Invite, 200..=299) => match self.state {
                ServerState::Accepted { until } => ServerState::Accepted { until },
                _ => ServerState::Accepted { until: now + t.long() },
            },
            (Kind::Invite, _) => ServerState::Completed {
                retransmit: (!self.reliable).then(|| Retransmit::start(now, t.t1)),
                until: now + t.long(),
            },
            (Kind::NonInvite, _) => ServerState::Completed {
                retransmit: None,
                until: if self.reliable { now } else { now + t.long() },
            },
        };
        true
    }

    /// A retransmission of the request arrived: the response to send again, if any (§17.2.1:
    /// in Proceeding and Completed; RFC 6026: absorbed while Accepted).
    pub fn on_request_retransmission(&self) -> Option<Bytes> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed { .. } => self.last_response.as_ref().map(|(_, b)| b.clone()),
            _ => None,
        }
    }

    /// An ACK matched this INVITE transaction. True when it was the first (for counters).
    pub fn on_ack(&mut self, now: Instant, t: &Timing) -> bool {
        if let ServerState::Completed { .. } = self.state {
            if self.kind == Kind::Invite {
                self.state = ServerState::Confirmed { until: if self.reliable { now } else { now + t.t4 } };
                return true;
            }
        }
        false
    }

    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            ServerState::Accepted { until } | ServerState::Confirmed { until } => Some(*until),
            ServerState::Completed { retransmit, until } => Some(retransmit.map_or(*until, |r| r.at.min(*until))),
            _ => None,
        }
    }

    pub fn on_timer(&mut self, now: Instant, t: &Timing) -> ServerFired {
        match &mut self.state {
            ServerState::Completed { retransmit, until } => {
                if now >= *until {
                    let waited_for_ack = self.kind == Kind::Invite;
                    self.state = ServerState::Terminated;
                    return if waited_for_ack { ServerFired::AckTimeout } else { ServerFired::Done };
                }
                if let Some(r) = retransmit {
                    if now >= r.at {
                        r.back_off(now, Some(t.t2));
                        return self.last_response.as_ref().map_or(ServerFired::Nothing, |(_, b)| ServerFired::Resend(b.clone()));
                    }
                }
                ServerFired::Nothing
            }
            ServerState::Accepted { until } | ServerState::Confirmed { until } if now >= *until => {
                self.state = ServerState::Terminated;
                ServerFired::Done
            }
            _ => ServerFired::Nothing,
        }
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    pub fn final_sent(&self) -> bool {
        !matches!(self.state, ServerState::Trying | ServerState::Proceeding)
    }
}

/// Client transaction states (§17.1.1, §17.1.2, RFC 6026 §7.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// Request sent, no response yet (INVITE: Calling, non-INVITE: Trying). Retransmitted on
    /// Timer A/E (UDP) until Timer B/F.
    Calling { retransmit: Option<Retransmit>, timeout: Instant },
    /// A provisional response arrived. Non-INVITE keeps retransmitting every T2 (Timer E).
    Proceeding { retransmit: Option<Retransmit>, timeout: Option<Instant> },
    /// INVITE after a 2xx (RFC 6026): further 2xx pass up until Timer M.
    Accepted { until: Instant },
    /// A final response arrived. Absorbs its retransmissions (INVITE: re-sends the ACK) until
    /// Timer D/K.
    Completed { until: Instant },
    Terminated,
}

/// What a response does to a client transaction.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientReceived {
    /// Pass the response up to the TU.
    PassUp,
    /// A retransmission of the final response: absorbed (INVITE: send the ACK again).
    Absorbed,
}

/// What the engine must do after a client transaction timer fired.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFired {
    Nothing,
    /// Send the request again (Timer A/E).
    Resend,
    /// Timer B/F: no final response. The TU treats it as a 408.
    Timeout,
    /// Over (Timers D, K, M).
    Done,
}

#[derive(Clone, Debug)]
pub struct ClientTxn {
    pub kind: Kind,
    pub state: ClientState,
    pub reliable: bool,
}

impl ClientTxn {
    /// The request has just been sent.
    pub fn new(kind: Kind, reliable: bool, now: Instant, t: &Timing) -> ClientTxn {
        let retransmit = (!reliable).then(|| Retransmit::start(now, t.t1));
        ClientTxn { kind, state: ClientState::Calling { retransmit, timeout: now + t.long() }, reliable }
    }

    pub fn on_response(&mut self, now: Instant, status: u16, t: &Timing) -> ClientReceived {
        let provisional = status < 200;
        match (&self.state, self.kind) {
            (ClientState::Calling { retransmit, timeout }, kind) if provisional => {
                self.state = match kind {
                    // Timer A stops; Timer B stops too (the proxy's Timer C takes over).
                    Kind::Invite => ClientState::Proceeding { retransmit: None, timeout: None },
                    // Timer E continues at T2 (§17.1.2.2), Timer F keeps running.
                    Kind::NonInvite => ClientState::Proceeding {
                        retransmit: retransmit.map(|_| Retransmit { at: now + t.t2, interval: t.t2 }),
                        timeout: Some(*timeout),
                    },
                };
                ClientReceived::PassUp
            }
            (ClientState::Proceeding { .. }, _) if provisional => ClientReceived::PassUp,
            (ClientState::Calling { .. } | ClientState::Proceeding { .. }, Kind::Invite) if status < 300 => {
                self.state = ClientState::Accepted { until: now + t.long() };
                ClientReceived::PassUp
            }
            (ClientState::Calling { .. } | ClientState::Proceeding { .. }, Kind::Invite) => {
                self.state = ClientState::Completed { until: if self.reliable { now } else { now + Duration::from_secs(32).max(t.long() / 2) } };
                ClientReceived::PassUp
            }
            (ClientState::Calling { .. } | ClientState::Proceeding { .. }, Kind::NonInvite) => {
                self.state = ClientState::Completed { until: if self.reliable { now } else { now + t.t4 } };
                ClientReceived::PassUp
            }
            // RFC 6026: every 2xx while Accepted goes up (forked or retransmitted answers).
            (ClientState::Accepted { .. }, _) if (200..300).contains(&status) => ClientReceived::PassUp,
            _ => ClientReceived::Absorbed,
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            ClientState::Calling { retransmit, timeout } => Some(retransmit.map_or(*timeout, |r| r.at.min(*timeout))),
            ClientState::Proceeding { retransmit, timeout } => match (retransmit, timeout) {
                (Some(r), Some(to)) => Some(r.at.min(*to)),
                (None, Some(to)) => Some(*to),
                (Some(r), None) => Some(r.at),
                (None, None) => None,
            },
            ClientState::Accepted { until } | ClientState::Completed { until } => Some(*until),
            ClientState::Terminated => None,
        }
    }

    pub fn on_timer(&mut self, now: Instant, t: &Timing) -> ClientFired {
        let kind = self.kind;
        match &mut self.state {
            ClientState::Calling { timeout, .. } | ClientState::Proceeding { timeout: Some(timeout), .. } if now >= *timeout => {
                self.state = ClientState::Terminated;
                ClientFired::Timeout
            }
            ClientState::Calling { retransmit: Some(r), .. } | ClientState::Proceeding { retransmit: Some(r), .. } if now >= r.at => {
                // INVITE doubles without cap (Timer A); non-INVITE is capped at T2 (Timer E).
                r.back_off(now, (kind == Kind::NonInvite).then_some(t.t2));
                ClientFired::Resend
            }
            ClientState::Accepted { until } | ClientState::Completed { until } if now >= *until => {
                self.state = ClientState::Terminated;
                ClientFired::Done
            }
            _ => ClientFired::Nothing,
        }
    }

    /// Ends the transaction at once (transport error, or the TU gave up on it).
    pub fn terminate(&mut self) {
        self.state = ClientState::Terminated;
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    /// Whether a provisional response arrived (a CANCEL may be sent, §9.1).
    pub fn is_proceeding(&self) -> bool {
        matches!(self.state, ClientState::Proceeding { .. })
    }

    /// Whether no final response has arrived yet.
    pub fn is_pending(&self) -> bool {
        matches!(self.state, ClientState::Calling { .. } | ClientState::Proceeding { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }

    /// Steps a client transaction through its deadlines, recording when it resent.
    fn run_client(kind: Kind, reliable: bool) -> (Vec<Duration>, Duration) {
        let t = timing();
        let t0 = Instant::now();
        let mut c = ClientTxn::new(kind, reliable, t0, &t);
        let mut resends = Vec::new();
        for _ in 0..100 {
            let Some(at) = c.deadline() else { break };
            match c.on_timer(at, &t) {
                ClientFired::Resend => resends.push(at - t0),
                ClientFired::Timeout => return (resends, at - t0),
                _ => {}
            }
        }
        panic!("no timeout");
    }

    #[test]
    fn non_invite_retransmits_at_half_one_two_four_four_seconds_and_times_out_at_32() {
        let (resends, timeout) = run_client(Kind::NonInvite, false);
        let gaps: Vec<u64> = resends.iter().scan(Duration::ZERO, |prev, &t| {
            let gap = t - *prev;
            *prev = t;
            Some(gap.as_millis() as u64)
        }).collect();
        assert_eq!(&gaps[..5], &[500, 1000, 2000, 4000, 4000]);
        assert!(gaps[4..].iter().all(|&g| g == 4000));
        assert_eq!(timeout, Duration::from_secs(32));
    }

    #[test]
    fn invite_doubles_without_cap_and_tcp_never_retransmits() {
        let (resends, timeout) = run_client(Kind::Invite, false);
        let ms: Vec<u64> = resends.iter().map(|d| d.as_millis() as u64).collect();
        assert_eq!(ms, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(timeout, Duration::from_secs(32));
        let (resends, timeout) = run_client(Kind::Invite, true);
        assert!(resends.is_empty());
        assert_eq!(timeout, Duration::from_secs(32));
    }

    #[test]
    fn server_invite_final_retransmits_until_ack_or_timer_h() {
        let t = timing();
        let t0 = Instant::now();
        let mut s = ServerTxn::new(Kind::Invite, false);
        assert!(s.respond(t0, 486, Bytes::from_static(b"486"), &t));
        assert!(!s.respond(t0, 200, Bytes::from_static(b"200"), &t), "one final response only");
        let mut sent = Vec::new();
        let mut end = None;
        for _ in 0..100 {
            let Some(at) = s.deadline() else { break };
            match s.on_timer(at, &t) {
                ServerFired::Resend(_) => sent.push((at - t0).as_millis() as u64),
                ServerFired::AckTimeout => {
                    end = Some(at - t0);
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(&sent[..5], &[500, 1500, 3500, 7500, 11500], "Timer G capped at T2");
        assert_eq!(end, Some(Duration::from_secs(32)), "Timer H");
        // With an ACK: Confirmed, then gone after T4.
        let mut s = ServerTxn::new(Kind::Invite, false);
        s.respond(t0, 486, Bytes::from_static(b"486"), &t);
        assert!(s.on_ack(t0 + Duration::from_millis(10), &t));
        assert_eq!(s.deadline(), Some(t0 + Duration::from_millis(10) + t.t4));
        assert_eq!(s.on_timer(s.deadline().unwrap(), &t), ServerFired::Done);
        assert!(s.is_terminated());
    }

    #[test]
    fn client_invite_2xx_accepted_then_non_2xx_retransmission_absorbed() {
        let t = timing();
        let t0 = Instant::now();
        let mut c = ClientTxn::new(Kind::Invite, false, t0, &t);
        assert_eq!(c.on_response(t0, 180, &t), ClientReceived::PassUp);
        assert!(c.is_proceeding());
        assert_eq!(c.on_response(t0, 200, &t), ClientReceived::PassUp);
        assert_eq!(c.on_response(t0, 200, &t), ClientReceived::PassUp, "2xx retransmissions go up (RFC 6026)");
        let mut c = ClientTxn::new(Kind::Invite, false, t0, &t);
        assert_eq!(c.on_response(t0, 486, &t), ClientReceived::PassUp);
        assert_eq!(c.on_response(t0, 486, &t), ClientReceived::Absorbed);
    }
}
