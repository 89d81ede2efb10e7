//! sixgate-relay: the RTP/RTCP relay core. Knows nothing of SIP.
