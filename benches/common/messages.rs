//! The messages the message-layer benches parse: a typical INVITE with SDP, a REGISTER with
//! Outbound parameters, and a 200 OK to the INVITE.

pub const INVITE: &str = "INVITE sip:+15551234567@sixgate.example.net SIP/2.0\r\n\
Via: SIP/2.0/UDP [2001:db8:10::5]:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:+15551234567@sixgate.example.net>\r\n\
From: \"Alice\" <sip:alice@sixgate.example.net>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.net\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@[2001:db8:10::5]:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE\r\n\
Supported: replaces, timer\r\n\
User-Agent: TestPhone/1.0\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 256\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP6 2001:db8:10::5\r\n\
s=-\r\n\
c=IN IP6 2001:db8:10::5\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
a=rtcp:49171\r\n";

pub const REGISTER: &str = "REGISTER sip:sixgate.example.net SIP/2.0\r\n\
Via: SIP/2.0/UDP [2001:db8:10::5]:5060;branch=z9hG4bKnashds7;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:alice@sixgate.example.net>\r\n\
From: <sip:alice@sixgate.example.net>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:alice@[2001:db8:10::5]:5060>;expires=3600;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1\r\n\
Supported: outbound, path\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";

pub const OK: &str = "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK4b43c2ff8.1\r\n\
Via: SIP/2.0/UDP [2001:db8:10::5]:5060;branch=z9hG4bK776asdhds;rport=5060;received=2001:db8:10::5\r\n\
To: <sip:+15551234567@sixgate.example.net>;tag=a6c85cf\r\n\
From: \"Alice\" <sip:alice@sixgate.example.net>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.net\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:carrier@192.0.2.4>\r\n\
Content-Length: 0\r\n\r\n";
