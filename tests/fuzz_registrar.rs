//! Property test of the registrar's rules (`sixgate::registrar`): any sequence of REGISTERs —
//! mutated Contacts, expires values, `*`, q, Outbound parameters, CSeq and Call-ID — from a few
//! flows, at moving times, never panics; a refused REGISTER changes nothing; the flow table
//! always matches the bindings; nothing expired is ever handed out; and the store's view (the
//! changes replayed) always equals the registrar's.

use proptest::prelude::*;
use sixgate::config::{RegistrarConfig, TransportKind};
use sixgate::message::{parse, Framing};
use sixgate::registrar::{Binding, Change, Flow, RegisterRequest, Registrar};
use std::collections::BTreeMap;

const CONTACTS: &[&str] = &[
    "<sip:alice@[2001:db8::10]:5062>",
    "<sip:alice@192.168.1.10:5060>;expires=120",
    "<sip:alice@[2001:db8::11]>;q=0.5;expires=0",
    "<sip:alice@198.51.100.7:40000;ob>;+sip.instance=\"<urn:uuid:1>\";reg-id=1",
    "<sip:alice@198.51.100.7:40001;ob>;+sip.instance=\"<urn:uuid:1>\";reg-id=2;expires=30",
    "*",
    "<sip:alice@[2001:db8::10]:5062>;expires=soon",
    "<sip:alice@[2001:db8::12]>;q=7",
    "<tel:+441234>",
    "<sip:alice@[2001:db8::10]:5062>, <sip:alice@[2001:db8::13]>;expires=99999999999",
];
const FLOWS: &[&str] = &["[2001:db8::10]:5062", "198.51.100.7:40000", "198.51.100.7:40001"];

fn register_text(contact: &str, expires: Option<u32>, call: u8, cseq: u32, outbound: bool) -> String {
    let mut s = format!(
        "REGISTER sip:sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bK{cseq}x{call};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:alice@sixgate.test>;tag=1\r\nTo: <sip:alice@sixgate.test>\r\nCall-ID: c{call}\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\n"
    );
    if let Some(e) = expires {
        s.push_str(&format!("Expires: {e}\r\n"));
    }
    if outbound {
        s.push_str("Supported: outbound, path\r\nPath: <sip:edge.example;lr>\r\n");
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s
}

fn replay(store: &mut BTreeMap<String, Binding>, changes: &[Change]) {
    for c in changes {
        match c {
            Change::Put(b) => {
                store.insert(b.store_key(), b.clone());
            }
            Change::Delete { store_key } => {
                store.remove(store_key);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]
    #[test]
    fn registrar_rules_hold_under_any_sequence(steps in prop::collection::vec(
        (0..CONTACTS.len(), prop::option::of(prop::sample::select(vec![0u32, 1, 59, 60, 3600, 86_400])), 0u8..3, 1u32..6, any::<bool>(), 0..FLOWS.len(), 0u64..200, any::<bool>()),
        1..30,
    )) {
        let mut r = Registrar::new(RegistrarConfig { max_bindings_per_aor: 3, ..RegistrarConfig::default() });
        let mut store: BTreeMap<String, Binding> = BTreeMap::new();
        let mut now = 1_800_000_000u64;
        for (c, expires, call, cseq, outbound, flow, dt, kill_flow) in steps {
            now += dt;
            let text = register_text(CONTACTS[c], expires, call, cseq, outbound);
            let flow = Flow { transport: TransportKind::Udp, local: "192.0.2.5:5060".parse().unwrap(), remote: FLOWS[flow].parse().unwrap() };
            let Ok(msg) = parse(bytes::Bytes::from(text), Framing::Datagram) else { continue };
            let before: Vec<Binding> = { let mut v: Vec<Binding> = r.all().cloned().collect(); v.sort_by_key(Binding::store_key); v };
            match RegisterRequest::decode(&msg, "alice", flow).and_then(|req| r.register(&req, now)) {
                Ok(applied) => replay(&mut store, &applied.changes),
                Err((status, _, _)) => {
                    prop_assert!((400..600).contains(&status));
                    let after: Vec<Binding> = { let mut v: Vec<Binding> = r.all().cloned().collect(); v.sort_by_key(Binding::store_key); v };
                    prop_assert_eq!(before, after, "a refusal changed bindings");
                }
            }
            if kill_flow {
                let gone = r.flow_dead(&flow);
                replay(&mut store, &gone);
            }
            let purged = r.purge_expired(now);
            replay(&mut store, &purged);
            // The store's view is the registrar's.
            let mine: BTreeMap<String, Binding> = r.all().map(|b| (b.store_key(), b.clone())).collect();
            prop_assert_eq!(&mine, &store);
            // Flows counted right; nothing expired handed out; the per-AOR cap holds.
            let flows: std::collections::BTreeSet<Flow> = r.all().map(|b| b.flow).collect();
            prop_assert_eq!(r.sizes(), (mine.len(), flows.len()));
            prop_assert!(r.lookup("alice", now).iter().all(|b| b.expires_at > now));
            prop_assert!(mine.len() <= 3);
        }
    }
}
