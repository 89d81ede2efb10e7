//! The pure registrar rules (the engine's simulation covers them end to end with digest).

use super::*;

fn flow(remote: &str) -> Flow {
    Flow { transport: TransportKind::Udp, local: "[2001:db8::5]:5060".parse().unwrap(), remote: remote.parse().unwrap() }
}

fn request(contacts: &[(&str, Option<u32>)], call_id: &str, cseq: u32, from: &str) -> RegisterRequest {
    RegisterRequest {
        aor: "alice".into(),
        contacts: Some(contacts.iter().map(|(u, e)| ContactIn { uri: u.to_string(), expires: *e, q: None, instance: None, reg_id: None }).collect()),
        star: false,
        expires_header: None,
        call_id: call_id.into(),
        cseq,
        outbound: false,
        path: vec![],
        user_agent: None,
        flow: flow(from),
        nat: None,
    }
}

#[test]
fn bindings_refresh_expire_and_keep_their_flows_counted() {
    let mut r = Registrar::new(RegistrarConfig::default());
    let a = r.register(&request(&[("sip:alice@[2001:db8::10]", Some(120))], "c", 1, "[2001:db8::10]:5060"), 1000).unwrap();
    assert_eq!((a.changes.len(), a.new_flows.len()), (1, 1));
    // A refresh with the same contact (case differs) replaces it; the flow is not new.
    let a = r.register(&request(&[("SIP:alice@[2001:DB8::10]", Some(300))], "c", 2, "[2001:db8::10]:5060"), 1010).unwrap();
    assert_eq!((a.changes.len(), a.new_flows.len()), (1, 0));
    assert_eq!(r.sizes(), (1, 1));
    assert_eq!(r.contact_lines("alice", 1010), ["<SIP:alice@[2001:DB8::10]>;expires=300"]);
    // Same CSeq, same Call-ID: refused, nothing changes.
    assert_eq!(r.register(&request(&[("sip:alice@[2001:db8::10]", Some(60))], "c", 2, "[2001:db8::10]:5060"), 1011).unwrap_err().0, 500);
    // A second contact from another flow; lookup puts higher q first.
    let mut req = request(&[("sip:alice@[2001:db8::11]", Some(600))], "d", 1, "[2001:db8::11]:5060");
    req.contacts.as_mut().unwrap()[0].q = Some("0.2".into());
    r.register(&req, 1020).unwrap();
    let l: Vec<&str> = r.lookup("alice", 1020).iter().map(|b| b.contact.as_str()).collect();
    assert_eq!(l, ["SIP:alice@[2001:DB8::10]", "sip:alice@[2001:db8::11]"]);
    assert_eq!(r.sizes(), (2, 2));
    // Expiry removes the first; its flow goes with it.
    let gone = r.purge_expired(1310);
    assert_eq!(gone.len(), 1);
    assert_eq!(r.sizes(), (1, 1));
    // Expires 0 for an unknown contact is no error and no change.
    assert!(r.register(&request(&[("sip:alice@[2001:db8::99]", Some(0))], "e", 1, "[2001:db8::10]:5060"), 1320).unwrap().changes.is_empty());
}

#[test]
fn too_many_contacts_and_flows_that_die() {
    let cfg = RegistrarConfig { max_bindings_per_aor: 2, keepalive_failures: 2, ..RegistrarConfig::default() };
    let mut r = Registrar::new(cfg);
    let three = [("sip:a@[2001:db8::1]", None), ("sip:a@[2001:db8::2]", None), ("sip:a@[2001:db8::3]", None)];
    assert_eq!(r.register(&request(&three, "c", 1, "[2001:db8::1]:5060"), 10).unwrap_err().0, 403);
    assert_eq!(r.sizes(), (0, 0));
    r.register(&request(&three[..2], "c", 2, "[2001:db8::1]:5060"), 10).unwrap();
    let f = flow("[2001:db8::1]:5060");
    assert!(!r.flow_missed(&f));
    r.flow_alive(&f, 20);
    assert!(!r.flow_missed(&f), "an answer resets the count");
    assert!(r.flow_missed(&f));
    assert_eq!(r.flow_dead(&f).len(), 2);
    assert_eq!(r.sizes(), (0, 0));
    assert!(!r.flow_failed("alice", 20), "not Outbound bindings: 480, not 430");
}

#[test]
fn helpers_dates_params_and_lists() {
    assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(http_date(1_795_651_200), "Thu, 26 Nov 2026 00:00:00 GMT");
    assert_eq!(http_date(951_782_400 + 3661), "Tue, 29 Feb 2000 01:01:01 GMT");
    assert_eq!(
        params(";expires=60;+sip.instance=\"<urn:uuid:a;b>\";reg-id=1;ob"),
        vec![("expires".into(), Some("60".into())), ("+sip.instance".into(), Some("\"<urn:uuid:a;b>\"".into())), ("reg-id".into(), Some("1".into())), ("ob".into(), None)]
    );
    assert_eq!(split_list("<sip:a;lr>, \"x,y\" <sip:b;lr>,<sip:c,d>"), ["<sip:a;lr>", "\"x,y\" <sip:b;lr>", "<sip:c,d>"]);
}
