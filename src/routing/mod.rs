//! Where a request goes: a local user (their contacts), or a carrier chosen by the longest
//! matching number prefix, with priority/weight order, health from OPTIONS probes, and the
//! number written the way each carrier wants it. RFC 3263 lookups of carrier hosts run in the
//! driver ([`dns`]); this room only decides.
//!
//! Sans-IO and synchronous. Must never: pick a carrier for a request the engine did not
//! authenticate (the engine asks only for authenticated callers), or panic on a user part.

pub mod dns;

use crate::config::{Carrier, Config, NumberFormat, RoutingConfig, TargetUri, User};
use std::net::IpAddr;

/// The routing tables built from the config.
pub struct Router {
    users: Vec<User>,
    /// Indexes into `users` (a registrar may hold hundreds of thousands): by username or alias,
    /// and by number as configured and in E.164.
    by_name: std::collections::HashMap<String, usize>,
    by_number: std::collections::HashMap<String, usize>,
    carriers: Vec<Carrier>,
    /// Per carrier: false after its OPTIONS probe went unanswered, until one is answered.
    up: Vec<bool>,
    numbering: RoutingConfig,
}

/// The user part of a Request-URI, resolved.
#[derive(Debug, PartialEq, Eq)]
pub enum Called<'a> {
    User(&'a User),
    /// Not a local user: a number in E.164 (`+…`) if it could be normalised, else as dialled.
    Number(String),
    /// Neither a user nor something that looks like a number.
    Unknown,
}

impl Router {
    pub fn new(cfg: &Config) -> Router {
        let mut r = Router {
            users: cfg.users.clone(),
            by_name: Default::default(),
            by_number: Default::default(),
            carriers: cfg.carriers.clone(),
            up: vec![true; cfg.carriers.len()],
            numbering: cfg.routing.clone(),
        };
        // The config refuses a name or number that reaches two users; first wins regardless.
        for (i, u) in r.users.iter().enumerate() {
            for name in std::iter::once(&u.username).chain(&u.aliases) {
                r.by_name.entry(name.clone()).or_insert(i);
            }
        }
        for (i, u) in r.users.iter().enumerate() {
            for n in &u.numbers {
                r.by_number.entry(n.clone()).or_insert(i);
                let e164 = r.normalise(n);
                r.by_number.entry(e164).or_insert(i);
            }
        }
        r
    }

    /// Takes a new config's users, carriers and numbering plan (a reload). Carriers keep their
    /// index: a carrier of the same name is replaced in place (its up/down state stays), a new
    /// one is appended, and a removed one stays as a retired slot that matches no prefix and no
    /// source and is not probed, so indexes held by calls under way stay valid.
    pub fn reload(&mut self, cfg: &Config) {
        let mut carriers: Vec<Carrier> = Vec::with_capacity(self.carriers.len().max(cfg.carriers.len()));
        let mut up = Vec::with_capacity(carriers.capacity());
        for (i, old) in self.carriers.iter().enumerate() {
            match cfg.carriers.iter().find(|c| c.name == old.name) {
                Some(c) => {
                    carriers.push(c.clone());
                    up.push(self.up[i] || c.probe_interval_secs == 0);
                }
                None => {
                    carriers.push(Carrier { prefixes: Vec::new(), source_cidrs: Vec::new(), probe_interval_secs: 0, credentials: None, ..old.clone() });
                    up.push(false);
                }
            }
        }
        for c in cfg.carriers.iter().filter(|c| !self.carriers.iter().any(|o| o.name == c.name)) {
            carriers.push(c.clone());
            up.push(true);
        }
        let mut fresh = Router::new(cfg);
        (fresh.carriers, fresh.up) = (carriers, up);
        *self = fresh;
    }

    pub fn user(&self, username: &str) -> Option<&User> {
        self.by_name.get(username).map(|&i| &self.users[i]).filter(|u| u.username == username)
    }

    pub fn carriers(&self) -> &[Carrier] {
        &self.carriers
    }

    /// The carrier whose source CIDRs contain `ip`.
    pub fn carrier_by_source(&self, ip: IpAddr) -> Option<usize> {
        self.carriers.iter().position(|c| c.source_cidrs.iter().any(|n| n.contains(ip)))
    }

    /// Visual separators (RFC 3966) removed; `None` if what is left is not a number.
    fn digits(user: &str) -> Option<String> {
        let s: String = user.chars().filter(|c| !matches!(c, '-' | '.' | '(' | ')' | ' ')).collect();
        crate::config::is_number(&s).then_some(s)
    }

    /// A dialled number in E.164 where the numbering plan allows: `00…` -> `+…`, national
    /// `0…` -> `+<cc>…` when a country code is configured; otherwise unchanged.
    pub fn normalise(&self, number: &str) -> String {
        if number.starts_with('+') {
            return number.to_string();
        }
        let n = &self.numbering;
        if !n.international_prefix.is_empty() {
            if let Some(rest) = number.strip_prefix(n.international_prefix.as_str()) {
                return format!("+{rest}");
            }
        }
        if !n.country_code.is_empty() && !n.national_prefix.is_empty() {
            if let Some(rest) = number.strip_prefix(n.national_prefix.as_str()) {
                return format!("+{}{rest}", n.country_code);
            }
        }
        number.to_string()
    }

    /// Who a Request-URI user part names: a username, an alias, or one of a user's numbers (as
    /// dialled or normalised); otherwise the number it is.
    pub fn called(&self, user_part: &str) -> Called<'_> {
        if let Some(&i) = self.by_name.get(user_part) {
            return Called::User(&self.users[i]);
        }
        let Some(dialled) = Self::digits(user_part) else { return Called::Unknown };
        let e164 = self.normalise(&dialled);
        match self.by_number.get(&dialled).or_else(|| self.by_number.get(&e164)) {
            Some(&i) => Called::User(&self.users[i]),
            None => Called::Number(e164),
        }
    }

    /// Carriers for `number`, in the order to try them: longest matching prefix first, then
    /// priority, then a weighted draw among equal priority (`draw` yields uniform numbers).
    /// Carriers marked down are left out.
    pub fn carriers_for(&self, number: &str, mut draw: impl FnMut() -> u64) -> Vec<usize> {
        let mut hits: Vec<(usize, usize)> = Vec::new(); // (carrier, prefix length)
        for (i, c) in self.carriers.iter().enumerate() {
            if !self.up[i] {
                continue;
            }
            let best = c.prefixes.iter().filter(|p| *p == "+" || number.starts_with(p.as_str())).map(|p| p.len()).max();
            if let Some(len) = best {
                hits.push((i, len));
            }
        }
        hits.sort_by_key(|&(i, len)| (std::cmp::Reverse(len), self.carriers[i].priority));
        // Weighted shuffle inside each run of equal (length, priority): RFC 2782's selection.
        let mut out = Vec::with_capacity(hits.len());
        let mut start = 0;
        while start < hits.len() {
            let key = |&(i, len): &(usize, usize)| (len, self.carriers[i].priority);
            let end = start + hits[start..].iter().take_while(|h| key(h) == key(&hits[start])).count();
            let mut group: Vec<usize> = hits[start..end].iter().map(|h| h.0).collect();
            while !group.is_empty() {
                let total: u64 = group.iter().map(|&i| u64::from(self.carriers[i].weight)).sum();
                let mut pick = draw() % total.max(1);
                let mut k = 0;
                while k + 1 < group.len() && pick >= u64::from(self.carriers[group[k]].weight) {
                    pick -= u64::from(self.carriers[group[k]].weight);
                    k += 1;
                }
                out.push(group.remove(k));
            }
            start = end;
        }
        out
    }

    pub fn set_up(&mut self, carrier: usize, up: bool) -> bool {
        let changed = self.up.get(carrier).is_some_and(|&u| u != up);
        if let Some(u) = self.up.get_mut(carrier) {
            *u = up;
        }
        changed
    }

    pub fn is_up(&self, carrier: usize) -> bool {
        self.up.get(carrier).copied().unwrap_or(false)
    }

    /// The Request-URI for calling `number` (E.164 or as dialled) through `carrier`.
    pub fn carrier_request_uri(&self, carrier: usize, number: &str) -> String {
        let c = &self.carriers[carrier];
        let user = match c.number_format {
            NumberFormat::E164 => number.to_string(),
            NumberFormat::E164NoPlus => number.trim_start_matches('+').to_string(),
            NumberFormat::National => {
                let cc = format!("+{}", self.numbering.country_code);
                match number.strip_prefix(cc.as_str()) {
                    Some(rest) if !self.numbering.country_code.is_empty() => format!("{}{rest}", self.numbering.national_prefix),
                    _ => match number.strip_prefix('+') {
                        Some(rest) => format!("{}{rest}", self.numbering.international_prefix),
                        None => number.to_string(),
                    },
                }
            }
        };
        with_user(&c.uri, &user)
    }
}

/// `uri` with its user part set to `user`.
pub fn with_user(uri: &TargetUri, user: &str) -> String {
    let (scheme, rest) = uri.text.split_once(':').unwrap_or(("sip", &uri.text));
    let hostpart = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}:{user}@{hostpart}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(extra: &str) -> Router {
        let text = format!(
            "[sip]\ndomains=[\"sixgate.test\"]\n[[listen]]\ntransport=\"udp\"\naddress=\"::1\"\nport=5060\n\
             [routing]\ncountry_code=\"44\"\n\
             [[users]]\nusername=\"alice\"\npassword=\"x\"\nnumbers=[\"+442071234567\",\"1001\"]\naliases=[\"alice.smith\"]\n{extra}"
        );
        Router::new(&Config::from_toml(&text).unwrap())
    }

    const CARRIERS: &str = "\
        [[carriers]]\nname=\"uk\"\nuri=\"sip:192.0.2.1\"\nprefixes=[\"+44\"]\nnumber_format=\"national\"\n\
        [[carriers]]\nname=\"london\"\nuri=\"sip:192.0.2.2:5070;transport=tcp\"\nprefixes=[\"+4420\"]\n\
        [[carriers]]\nname=\"world\"\nuri=\"sip:carrier.example\"\nprefixes=[\"+\"]\npriority=5\nnumber_format=\"e164_no_plus\"\n\
        [[carriers]]\nname=\"world-backup\"\nuri=\"sip:backup.example\"\nprefixes=[\"+\"]\npriority=9\nsource_cidrs=[\"198.51.100.0/24\"]\n";

    #[test]
    fn users_by_name_alias_and_number_in_any_form() {
        let r = router("");
        for dialled in ["alice", "alice.smith", "1001", "+442071234567", "02071234567", "00442071234567", "+44-20-7123-4567"] {
            assert!(matches!(r.called(dialled), Called::User(u) if u.username == "alice"), "{dialled}");
        }
        assert_eq!(r.called("02079999999"), Called::Number("+442079999999".into()));
        assert_eq!(r.called("bob"), Called::Unknown);
    }

    #[test]
    fn longest_prefix_then_priority_and_numbers_in_each_carriers_format() {
        let r = router(CARRIERS);
        let mut n = 0u64;
        let mut draw = || {
            n += 1;
            n
        };
        assert_eq!(r.carriers_for("+442079999999", &mut draw), vec![1, 0, 2, 3]);
        assert_eq!(r.carriers_for("+14155550100", &mut draw), vec![2, 3]);
        assert_eq!(r.carrier_request_uri(0, "+442079999999"), "sip:02079999999@192.0.2.1");
        assert_eq!(r.carrier_request_uri(0, "+14155550100"), "sip:0014155550100@192.0.2.1");
        assert_eq!(r.carrier_request_uri(1, "+442079999999"), "sip:+442079999999@192.0.2.2:5070;transport=tcp");
        assert_eq!(r.carrier_request_uri(2, "+14155550100"), "sip:14155550100@carrier.example");
        assert_eq!(r.carrier_by_source("198.51.100.7".parse().unwrap()), Some(3));
        assert_eq!(r.carrier_by_source("::ffff:198.51.100.7".parse().unwrap()), Some(3), "v4-mapped source");
        assert_eq!(r.carrier_by_source("192.0.2.1".parse().unwrap()), None);
    }

    #[test]
    fn a_carrier_marked_down_is_skipped_until_it_is_up_again() {
        let mut r = router(CARRIERS);
        assert!(r.set_up(1, false));
        assert_eq!(r.carriers_for("+442079999999", || 0), vec![0, 2, 3]);
        assert!(r.set_up(1, true));
        assert_eq!(r.carriers_for("+442079999999", || 0)[0], 1);
    }

    #[test]
    fn equal_priority_is_shared_by_weight() {
        let extra = "[[carriers]]\nname=\"a\"\nuri=\"sip:192.0.2.1\"\nprefixes=[\"+1\"]\nweight=90\n\
                     [[carriers]]\nname=\"b\"\nuri=\"sip:192.0.2.2\"\nprefixes=[\"+1\"]\nweight=10\n";
        let r = router(extra);
        let mut seed = 12345u64;
        let mut first_a = 0;
        for _ in 0..1000 {
            let order = r.carriers_for("+1555", || {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                seed >> 33
            });
            assert_eq!(order.len(), 2);
            first_a += usize::from(order[0] == 0);
        }
        assert!((850..=950).contains(&first_a), "{first_a}");
    }
}
