#!/usr/bin/env bash
# Call load through a SIP proxy with sipp, Kamailio and sixgate side by side.
#
# usage: benches/proxy_load.sh [kamailio] [sixgate]        (default: both, in that order)
#
# Call flow (benches/sipp/load_uac_auth.xml, benches/sipp/load_uas.xml): UAC alice on [::1]
# sends INVITE sip:+442071234567@[::1]:PORT, gets 407, ACKs, re-sends with Proxy-Authorization
# (alice/secret), gets 100/180/200 from the IPv4 "carrier" UAS on 127.0.0.1 (routed on +44),
# ACK and BYE follow the Record-Route set through the proxy, 200. For each proxy and each offered
# rate: calls attempted, failed %, and the CPU time (user+system) per attempted call used by the
# proxy (whole process tree), the UAC sipp and the UAS sipp.
#
# Environment:
#   RATES="200 500 1000 2000"   offered call rates (calls/s), one step each
#   DURATION=5                  seconds of offered load per step (sipp -m = RATE*DURATION)
#   HOLD_MS=0                   call hold time between ACK and BYE (sipp -d)
#   MEDIA=0                     1: the IPv6 caller's SDP is bridged to the IPv4 callee through a
#                               relay: sixgate's own ([media] relay = "auto") against Kamailio
#                               with rtpengine (rtpengine-daemon, userspace; rtpengine_offer /
#                               _answer / _delete with direction=v6 direction=v4, ICE=remove), so
#                               every call creates, updates and deletes a relay session. No RTP is
#                               sent (benches/relay.rs measures forwarding against rtpengine);
#                               rtpengine runs as a child of Kamailio's main process, so its CPU
#                               and memory count in the proxy's figures. 0: signaling only
#                               (sixgate with relay = "never", Kamailio without rtpengine).
#   RTPENGINE_BIN=/usr/bin/rtpengine
#   SETTLE=1                    seconds after the UAC ends still counted in the proxy/UAS CPU
#                               (transaction timers); the UAS is stopped after it
#   SIXGATE_BIN=<repo>/target/release/sixgate   (missing: sixgate is skipped, said loudly)
#   KAMAILIO_BIN=/usr/sbin/kamailio   KAMAILIO_MODULES=/usr/lib/x86_64-linux-gnu/kamailio/modules
#   KAMAILIO_CHILDREN=2         UDP worker processes per listen socket (2 sockets: 2x this)
#   KAMAILIO_SHM_MB=4096        Kamailio shared memory (transactions live there for 32 s)
#   SIPP=/usr/bin/sipp
#   PORT_BASE=random free       proxy=BASE, UAS=BASE+1, UAC=BASE+2, media/control above
#   KEEP=1                      keep the work directory (configs, logs, sipp stats)
#
# CPU: proxy and UAS sampled just before the UAC starts and SETTLE s after it ends, from
# /proc/PID/task/TID/schedstat (on-CPU ns; falls back to utime+stime ticks of /proc/PID/stat when
# a thread died in between); the proxy figure sums every process whose parent chain reaches the
# proxy's pid (Kamailio forks its workers). It includes the proxy's idle cost (timer processes),
# printed once per proxy as "idle". The UAC figure is sipp's rusage (bash `times`), so it
# includes sipp's start-up and exit. "fail%" counts every attempted
# call that did not succeed (failed, or unfinished when the UAC was stopped).
# Exit status: 1 when a proxy that should run fails to start; 0 otherwise (a missing binary is a
# skip, reported).
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATES=${RATES:-"200 500 1000 2000"}
DURATION=${DURATION:-5}
HOLD_MS=${HOLD_MS:-0}
SETTLE=${SETTLE:-1}
SIPP=${SIPP:-/usr/bin/sipp}
KAMAILIO_BIN=${KAMAILIO_BIN:-/usr/sbin/kamailio}
KAMAILIO_MODULES=${KAMAILIO_MODULES:-/usr/lib/x86_64-linux-gnu/kamailio/modules}
KAMAILIO_CHILDREN=${KAMAILIO_CHILDREN:-2}
SIXGATE_BIN=${SIXGATE_BIN:-$ROOT/target/release/sixgate}
MEDIA=${MEDIA:-0}
RTPENGINE_BIN=${RTPENGINE_BIN:-/usr/bin/rtpengine}
UAC_SF=$ROOT/benches/sipp/load_uac_auth.xml
UAS_SF=$ROOT/benches/sipp/load_uas.xml
NUMBER=+442071234567
HZ=$(getconf CLK_TCK)

PROXIES=("$@")
[ ${#PROXIES[@]} -eq 0 ] && PROXIES=(kamailio sixgate)
for p in "${PROXIES[@]}"; do
    case $p in kamailio|sixgate) ;; *) echo "unknown proxy '$p' (kamailio|sixgate)" >&2; exit 2 ;; esac
done
[ -x "$SIPP" ] || { echo "sipp not found at $SIPP (Debian package sip-tester)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/proxy_load.XXXXXX)
PIDS=()          # every process we started and have not reaped yet

cleanup() {
    reap_all
    [ -s "$WORK/uac.pid" ] && kill -TERM "$(cat "$WORK/uac.pid")" 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# process bookkeeping, ports, CPU sampling (shared with the other load script)
# shellcheck source=benches/load_common.sh
source "$ROOT/benches/load_common.sh"



# ---------------------------------------------------------------- ports
if [ -n "${PORT_BASE:-}" ]; then
    BASE=$PORT_BASE
else
    for _ in $(seq 50); do
        BASE=$(( 10000 + (RANDOM % 200) * 100 ))
        ok=1; for o in 0 1 2 10 11 12 13 20 21 22 23 30 31 40; do port_free $((BASE + o)) || ok=0; done
        [ $ok = 1 ] && break
    done
fi
PPORT=$BASE UAS_PORT=$((BASE + 1)) UAC_PORT=$((BASE + 2))
UAC_MP=$((BASE + 10)) UAS_MP=$((BASE + 20)) UAC_CP=$((BASE + 30)) UAS_CP=$((BASE + 31)) NG_PORT=$((BASE + 40))

# Kamailio's part for MEDIA=1: the rtpengine module, the offer, the answer, the deletes.
RTPE_FLAGS="direction=v6 direction=v4 ICE=remove replace-origin"
kamailio_media_modules() {
    [ "$MEDIA" = 1 ] || return 0
    printf 'loadmodule "rtpengine.so"\nmodparam("rtpengine", "rtpengine_sock", "udp:127.0.0.1:%s")\n' "$NG_PORT"
}
kamailio_offer() {
    [ "$MEDIA" = 1 ] || return 0
    printf 'if (is_method("INVITE") && has_body("application/sdp")) { rtpengine_offer("%s"); t_on_reply("MEDIA"); t_on_failure("MEDIA_FAILED"); }' "$RTPE_FLAGS"
}
kamailio_bye() { [ "$MEDIA" = 1 ] && printf '%s' 'if (is_method("BYE")) { rtpengine_delete(); }'; }
kamailio_media_routes() {
    [ "$MEDIA" = 1 ] || return 0
    printf 'onreply_route[MEDIA] {\n    if (has_body("application/sdp")) { rtpengine_answer("%s"); }\n}\n' "$RTPE_FLAGS"
    printf 'failure_route[MEDIA_FAILED] {\n    rtpengine_delete();\n}\n'
}

# ---------------------------------------------------------------- proxies
write_kamailio_cfg() {
    cat > "$1" <<EOF
#!KAMAILIO
# written by benches/proxy_load.sh: stateful proxy, digest (407) with a fixed password for
# alice (no database), +44 numbers to the IPv4 carrier UAS, Record-Route, loose routing.
$(kamailio_globals)
listen=udp:[::1]:$PPORT
listen=udp:127.0.0.1:$PPORT

mpath="$KAMAILIO_MODULES"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "auth.so"
$(kamailio_media_modules)

modparam("rr", "enable_double_rr", 1)
modparam("rr", "append_fromtag", 1)
# qop=auth like sixgate's challenges (the module's default is no qop)
modparam("auth", "qop", "auth")

request_route {
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }

    if (has_totag()) {
        # in-dialog: ACK/BYE along the Record-Route set
        if (loose_route()) { $(kamailio_bye) t_relay(); exit; }
        # ACK to a 407 is absorbed by sl; ACK to a relayed non-2xx by tm
        if (is_method("ACK")) { if (t_check_trans()) { t_relay(); } exit; }
        sl_send_reply("404", "Not here");
        exit;
    }
    if (is_method("CANCEL")) { if (t_check_trans()) { t_relay(); } exit; }
    # a retransmitted request with a transaction: tm re-sends its last reply and ends the script
    if (!is_method("ACK")) { t_check_trans(); }

    if (is_method("INVITE")) {
        if (!pv_proxy_authenticate("\$fd", "secret", "0") || \$au != "alice") {
            proxy_challenge("\$fd", "0");
            exit;
        }
        consume_credentials();
    }
    if (\$rU =~ "^\\\\+44") {
        \$du = "sip:127.0.0.1:$UAS_PORT";
    } else {
        sl_send_reply("404", "No route");
        exit;
    }
    if (is_method("INVITE")) { record_route(); }
    $(kamailio_offer)
    if (!t_relay()) { sl_reply_error(); }
    exit;
}
$(kamailio_media_routes)
EOF
}

write_sixgate_cfg() {
    cat > "$1" <<EOF
# written by benches/proxy_load.sh
[sip]
domains = ["localhost"]

[[listen]]
transport = "udp"
address = "::1"
port = $PPORT

[[listen]]
transport = "udp"
address = "127.0.0.1"
port = $PPORT

[limits]
invite_rate_per_source = 1000000
invite_burst_per_source = 1000000

[auth]
realm = "localhost"
# strict: sipp sends the Request-URI as the digest uri thanks to -auth_uri (see the UAC command).
digest_uri = "strict"
# sipp 3.6 answers only the first challenge and only MD5.
algorithms = ["MD5", "SHA-256"]

[log]
level = "warn"

[media]
# A released port pair waits 30 s before reuse: a range holds (calls/s x (hold + 30 s)) calls.
$( [ "$MEDIA" = 1 ] && printf 'relay = "auto"\nipv6 = "::1"\nipv4 = "127.0.0.1"\nports_v6 = [20000, 65000]\nports_v4 = [20000, 65000]' || printf 'relay = "never"' )

[[users]]
username = "alice"
password = "secret"

[[carriers]]
name = "uas"
uri = "sip:127.0.0.1:$UAS_PORT"
prefixes = ["+44"]
probe_interval_secs = 0
source_cidrs = []
EOF
}

PROXY_PID=
start_proxy() {  # start_proxy NAME: sets PROXY_PID; returns 1 on failure, 2 when skipped
    local name=$1 dir=$WORK/$1
    mkdir -p "$dir"
    case $name in
    kamailio)
        [ -x "$KAMAILIO_BIN" ] || { echo "SKIP kamailio: $KAMAILIO_BIN not found"; return 2; }
        write_kamailio_cfg "$dir/kamailio.cfg"
        if ! "$KAMAILIO_BIN" -c -f "$dir/kamailio.cfg" > "$dir/check.log" 2>&1; then
            echo "kamailio: config check failed:"; tail -20 "$dir/check.log"; return 1
        fi
        # Shared memory: every transaction lives in it for up to 32 s (Timer H/J); 256 MB ran
        # out at 3 000 calls/s ("could not allocate shared memory"), so give it plenty.
        set -- "$KAMAILIO_BIN" -DD -E -f "$dir/kamailio.cfg" -Y "$dir" -w "$dir" -m "${KAMAILIO_SHM_MB:-4096}" -M 32
        if [ "$MEDIA" = 1 ]; then
            [ -x "$RTPENGINE_BIN" ] || { echo "SKIP kamailio: MEDIA=1 needs rtpengine at $RTPENGINE_BIN (Debian rtpengine-daemon)"; return 2; }
            # rtpengine first, from a shell that then becomes Kamailio: rtpengine is a child of
            # the proxy's pid, so the CPU and memory sampling of that tree include it.
            local rtpe=("$RTPENGINE_BIN" --foreground --table=-1 --interface=v6/::1 --interface=v4/127.0.0.1
                --listen-ng="127.0.0.1:$NG_PORT" --port-min=20000 --port-max=65000 --delete-delay="${RTPENGINE_DELETE_DELAY:-0}" --log-level=3 --pidfile="$dir/rtpengine.pid")
            echo "  rtpengine:"; show_cmd "${rtpe[@]}"
            set -- bash -c "$(printf '%q ' "${rtpe[@]}") > $(printf '%q' "$dir/rtpengine.log") 2>&1 & sleep 1; exec $(printf '%q ' "$@")"
        fi
        ;;
    sixgate)
        [ -x "$SIXGATE_BIN" ] || {
            echo "SKIP sixgate: no executable at SIXGATE_BIN=$SIXGATE_BIN (build it with cargo build --release, or set SIXGATE_BIN)"
            return 2; }
        write_sixgate_cfg "$dir/sixgate.toml"
        if ! "$SIXGATE_BIN" check-config "$dir/sixgate.toml" > "$dir/check.log" 2>&1; then
            echo "sixgate: config check failed:"; cat "$dir/check.log"; return 1
        fi
        set -- "$SIXGATE_BIN" run -c "$dir/sixgate.toml"
        ;;
    esac
    echo "proxy $name (config $dir/$( [ "$name" = kamailio ] && echo kamailio.cfg || echo sixgate.toml )):"
    show_cmd "$@"
    "$@" > "$dir/proxy.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    local i
    for i in $(seq 50); do
        kill -0 "$PROXY_PID" 2>/dev/null || break
        if udp_bound "[::1]" "$PPORT" && udp_bound 127.0.0.1 "$PPORT"; then return 0; fi
        sleep 0.1
    done
    echo "$name failed to start (listening on udp [::1]:$PPORT and 127.0.0.1:$PPORT); log:"
    tail -20 "$dir/proxy.log"
    stop "$PROXY_PID"
    return 1
}

# ---------------------------------------------------------------- one load step
declare -A R   # results: R[proxy:rate:field]

# Column of FIELD in sipp's ;-separated stat CSV, value from the last line.
stat_field() {
    awk -F';' -v k="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == k) c = i; next } { v = $c } END { print v + 0 }' "$1"
}

run_step() {  # run_step PROXY RATE
    local name=$1 rate=$2 dir=$WORK/$1/r$2
    mkdir -p "$dir"
    local calls=$((rate * DURATION)) limit=$((rate * 2 > 100 ? rate * 2 : 100))
    local uas=("$SIPP" -sf "$UAS_SF" -t u1 -i 127.0.0.1 -p "$UAS_PORT" -mp "$UAS_MP" -cp "$UAS_CP"
        -nostdin -timeout "$((DURATION + 30))s" -recv_timeout 10000 -default_behaviors all,-abortunexp
        -trace_err -error_file "$dir/uas_err.log" -max_log_size 1000000)
    local uac=("$SIPP" -sf "$UAC_SF" -t u1 -i ::1 -p "$UAC_PORT" -mp "$UAC_MP" -cp "$UAC_CP"
        -s "$NUMBER" -auth_uri "$NUMBER@[::1]:$PPORT" "[::1]:$PPORT" -r "$rate" -rp 1000 -m "$calls" -l "$limit" -d "$HOLD_MS"
        -nostdin -timeout "$((DURATION + 10))s" -recv_timeout 5000 -default_behaviors all,-abortunexp
        -trace_stat -stf "$dir/uac_stat.csv" -fd 1
        -trace_err -error_file "$dir/uac_err.log" -max_log_size 1000000)
    if [ "$rate" = "${RATES%% *}" ]; then
        echo "  UAS:"; show_cmd "${uas[@]}"; echo "  UAC:"; show_cmd "${uac[@]}"
        header
    fi

    "${uas[@]}" > "$dir/uas.out" 2>&1 &
    local uas_pid=$!
    PIDS+=("$uas_pid")
    local i
    for i in $(seq 50); do udp_bound 127.0.0.1 "$UAS_PORT" && break; sleep 0.1; done
    if ! kill -0 "$uas_pid" 2>/dev/null; then
        echo "  UAS sipp did not start:"; tail -5 "$dir/uas.out"; forget_pid "$uas_pid"; return 1
    fi

    local t0 t1 t_uac rc
    cpu_sample "$PROXY_PID" > "$dir/proxy.cpu0"; cpu_sample "$uas_pid" > "$dir/uas.cpu0"; t0=$(now)
    # in a subshell so that `times` there reports sipp's rusage alone; its pid goes to a file
    # so that cleanup can stop it on an interrupt
    ( "${uac[@]}" > "$dir/uac.out" 2>&1 & echo $! > "$WORK/uac.pid"; wait $!; rc=$?; times > "$dir/uac.times"; exit $rc )
    rc=$?
    rm -f "$WORK/uac.pid"
    t_uac=$(now)
    sleep "$SETTLE"
    cpu_sample "$PROXY_PID" > "$dir/proxy.cpu1"; cpu_sample "$uas_pid" > "$dir/uas.cpu1"; t1=$(now)
    local mem; mem=$(( $(tree_pss_kb "$PROXY_PID") / 1024 ))
    stop "$uas_pid"

    # bash `times`, second line = children (sipp): "0m1.234s 0m0.056s"
    local uac_s
    uac_s=$(sed -n 2p "$dir/uac.times" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } printf "%.3f", s }')
    local att ok fl
    if [ -s "$dir/uac_stat.csv" ]; then
        att=$(stat_field "$dir/uac_stat.csv" TotalCallCreated)
        ok=$(stat_field "$dir/uac_stat.csv" 'SuccessfulCall(C)')
        fl=$(stat_field "$dir/uac_stat.csv" 'FailedCall(C)')
        rtx=$(stat_field "$dir/uac_stat.csv" 'Retransmissions(C)')
        # ResponseTime1(C), mean first INVITE -> 200 (407 round included), "hh:mm:ss:usec"
        rtd=$(awk -F';' -v k='ResponseTime1(C)' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == k) c = i; next } { v = $c }
            END { n = split(v, a, ":"); if (n == 4) printf "%.1f", (a[1] * 3600 + a[2] * 60 + a[3]) * 1000 + a[4] / 1000; else print "-" }' "$dir/uac_stat.csv")
    else
        att=0 ok=0 fl=0 rtx=0 rtd=-
        echo "  (no sipp stat file; UAC exit $rc):"; tail -5 "$dir/uac.out"
    fi
    local k=$name:$rate
    R[$k:att]=$att R[$k:ok]=$ok R[$k:failed]=$fl R[$k:rc]=$rc R[$k:rtx]=$rtx R[$k:rtd]=$rtd
    R[$k:wall]=$(awk -v a="$t0" -v b="$t_uac" 'BEGIN { printf "%.2f", b - a }')
    # CPU seconds in the step, and per attempted call in µs
    R[$k:proxy_s]=$(cpu_delta "$dir/proxy.cpu0" "$dir/proxy.cpu1")
    R[$k:uas_s]=$(cpu_delta "$dir/uas.cpu0" "$dir/uas.cpu1")
    R[$k:uac_s]=$uac_s
    R[$k:window]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    local f
    for f in proxy uac uas; do
        R[$k:${f}_us]=$(awk -v s="${R[$k:${f}_s]}" -v n="$att" 'BEGIN { if (n > 0) printf "%.0f", s * 1e6 / n; else print "-" }')
    done
    R[$k:failpct]=$(awk -v a="$att" -v o="$ok" 'BEGIN { if (a > 0) printf "%.1f", (a - o) * 100 / a; else print "-" }')
    printf '%-9s %6s %8s %9s %9s %6s %7s %7s %10s %10s %10s %7s %7s %7s %7s %7s\n' \
        "$name" "$rate" "$calls" "$att" "$ok" "${R[$k:failpct]}" "$rtx" "$rtd" \
        "${R[$k:proxy_us]}" "${R[$k:uac_us]}" "${R[$k:uas_us]}" \
        "$(pct "${R[$k:proxy_s]}" "${R[$k:window]}")" "$(pct "$uac_s" "${R[$k:wall]}")" \
        "$(pct "${R[$k:uas_s]}" "${R[$k:window]}")" "${R[$k:wall]}" "$mem"
    local unexp_c unexp_s
    unexp_c=$(grep -c 'Continuing call on unexpected message' "$dir/uac_err.log" 2>/dev/null)
    unexp_s=$(grep -c 'Continuing call on unexpected message' "$dir/uas_err.log" 2>/dev/null)
    if [ "${unexp_c:-0}" -gt 0 ] || [ "${unexp_s:-0}" -gt 0 ]; then
        echo "    out-of-order messages tolerated (proxy reordered, e.g. 180 after 200, BYE before ACK): UAC ${unexp_c:-0}, UAS ${unexp_s:-0}"
    fi
    case $rc in
        0|1) ;;
        *) echo "    UAC sipp exit status $rc (0 all calls ok, 1 some failed, 97/99 stopped early, 255 fatal error)" ;;
    esac
    if [ "$att" -gt "$ok" ] && [ -s "$dir/uac_err.log" ]; then
        echo "    first UAC errors:"; grep -v '^$' "$dir/uac_err.log" | head -3 | sed 's/^/      /'
    fi
}
pct() { awk -v s="$1" -v w="$2" 'BEGIN { if (w > 0) printf "%.0f%%", s * 100 / w; else print "-" }'; }

header() {
    printf '%-9s %6s %8s %9s %9s %6s %7s %7s %10s %10s %10s %7s %7s %7s %7s %7s\n' \
        proxy rate offered attempted ok fail% retrans rtd_ms proxy_us uac_us uas_us proxy%c uac%c uas%c wall_s pss_mb
}

# ---------------------------------------------------------------- main
echo "sipp load: rates [$RATES] calls/s, ${DURATION}s each, hold ${HOLD_MS} ms; ports proxy $PPORT, UAS $UAS_PORT, UAC $UAC_PORT; work dir $WORK"
[ "$MEDIA" = 1 ] && echo "MEDIA=1: every call's SDP bridged IPv6 <-> IPv4 through a relay session (sixgate's relay; Kamailio + rtpengine), no RTP sent"
echo "(retrans = UAC retransmissions; rtd_ms = mean first INVITE -> 200, 407 round included (1 ms resolution);"
echo " *_us = CPU µs per attempted call; *%c = CPU as % of one core over the step;"
echo " pss_mb = proxy memory (PSS of its process tree) at the end of the step)"
status=0
RAN=()
for name in "${PROXIES[@]}"; do
    echo
    start_proxy "$name"
    case $? in
        0) ;;
        2) continue ;;
        *) status=1; continue ;;
    esac
    # idle cost of the proxy (timer processes/threads), one second after start-up settled
    sleep 1
    cpu_sample "$PROXY_PID" > "$WORK/$name/idle.cpu0"; sleep 1; cpu_sample "$PROXY_PID" > "$WORK/$name/idle.cpu1"
    R[$name:idle]=$(cpu_delta "$WORK/$name/idle.cpu0" "$WORK/$name/idle.cpu1" | awk '{ printf "%.1f", $1 * 1000 }')
    echo "  idle: ${R[$name:idle]} ms CPU per second, $(wc -l < "$WORK/$name/idle.cpu1") process(es)"
    for rate in $RATES; do
        if ! kill -0 "$PROXY_PID" 2>/dev/null; then
            echo "$name died during the run; log:"; tail -20 "$WORK/$name/proxy.log"; status=1; break
        fi
        run_step "$name" "$rate"
    done
    if kill -0 "$PROXY_PID" 2>/dev/null; then RAN+=("$name"); else status=1; fi
    stop "$PROXY_PID"
    [ -s "$WORK/$name/rtpengine.pid" ] && kill -TERM "$(cat "$WORK/$name/rtpengine.pid")" 2>/dev/null
    if grep -qiE 'error|panic|critical' "$WORK/$name/proxy.log"; then
        echo "  $name log has errors/warnings:"; grep -iE 'error|panic|critical' "$WORK/$name/proxy.log" | head -5 | sed 's/^/    /'
    fi
done

# ---------------------------------------------------------------- summary
echo
[ ${#RAN[@]} -gt 0 ] && echo "summary per rate (busiest = process with the most CPU as % of one core):"
[ ${#RAN[@]} -gt 0 ] && for rate in $RATES; do
    line="  rate $rate:"
    for name in "${RAN[@]}"; do
        k=$name:$rate
        [ -n "${R[$k:att]:-}" ] || continue
        busiest=$(awk -v p="$(pct "${R[$k:proxy_s]}" "${R[$k:window]}")" -v c="$(pct "${R[$k:uac_s]}" "${R[$k:wall]}")" \
            -v s="$(pct "${R[$k:uas_s]}" "${R[$k:window]}")" 'BEGIN {
                b = "proxy"; m = p + 0; if (c + 0 > m) { b = "uac"; m = c + 0 } if (s + 0 > m) { b = "uas"; m = s + 0 }
                printf "%s %d%%", b, m }')
        line="$line  $name: ${R[$k:proxy_us]} µs/call, fail ${R[$k:failpct]}%, busiest $busiest;"
    done
    k=kamailio:$rate; s=sixgate:$rate
    if [ -n "${R[$k:proxy_us]:-}" ] && [ -n "${R[$s:proxy_us]:-}" ]; then
        line="$line  sixgate/kamailio proxy CPU per call = $(cpu_ratio "$s" "$k")"
    fi
    echo "$line"
done
[ ${#RAN[@]} -lt ${#PROXIES[@]} ] && echo "note: not run: $(comm -23 <(printf '%s\n' "${PROXIES[@]}" | sort) <(printf '%s\n' "${RAN[@]}" | sort) | tr '\n' ' ')"
exit $status
