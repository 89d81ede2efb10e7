#!/usr/bin/env bash
# REGISTER load on a SIP registrar with sipp, Kamailio and sixgate side by side in one run.
#
# usage: benches/register_load.sh [kamailio] [sixgate]        (default: both, in that order)
#
# Flow (benches/sipp/reg_load_auth.xml): each sipp call registers one distinct user:
# REGISTER sip:localhost -> 401 (WWW-Authenticate, MD5, qop=auth) -> REGISTER with Authorization
# (user and password from an injection file, digest uri "sip:localhost" thanks to -auth_uri)
# -> 200. Users are user000000..userNNNNNN with password "pw-<user>"; every step registers users
# never registered before in that run (so each success is a new binding). SIPP_INSTANCES sipp
# processes run in parallel, each with its own source address, port and slice of the users
# (one sipp with its default 64 KiB socket buffers loses datagrams from ~10 000 REGISTER/s;
# with SIPP_BUFF it did 25 000/s on half a core). Before the steps, one registration with a
# full message trace (the "smoke" call) checks that the registrar answers the flow at all and
# shows the digest uri sipp sent; a registrar that fails it is not measured.
# For each registrar and offered rate: registrations attempted, failed %, retransmissions, UDP
# drops, achieved registrations/s, CPU time (user+system) per attempted registration of the
# registrar (whole process tree) and of sipp (all instances), CPU as % of one core, the
# registrar's memory before and after the step and the bytes per new binding, and which side
# limited the rate. After the last step, MEM_SETTLE s later, the settled memory per binding.
#
# Environment:
#   RATES="2000 5000 10000 20000 30000"
#                               offered registration rates (registrations/s, all sipp
#                               instances together), one step each
#   DURATION=5                  seconds of offered load per step (RATE*DURATION registrations)
#   SIPP_INSTANCES=2            parallel sipp processes; each gets RATE/SIPP_INSTANCES (1..8)
#   SIPP_IP_SPREAD=1            1: instance k sends from 127.0.0.(k+1) (distinct sources, as
#                               distinct phones would be; per-source limits see k sources);
#                               0: every instance sends from 127.0.0.1. Via and Contact name
#                               the source address and port, so no binding looks NATed
#   SETTLE=1                    seconds after the last sipp ends still counted in the registrar's
#                               CPU, before its memory is sampled
#   MEM_SETTLE=35               seconds waited after the last step before the final memory sample
#                               ("settled": sixgate's non-INVITE server transactions live 32 s,
#                               Timer J = 64*T1, and are still in the per-step figures)
#   EXPIRES=3600                Expires of every REGISTER (no binding expires during a run)
#   DOMAIN=localhost            SIP domain = Request-URI host = digest realm = digest uri host
#   SIXGATE_BIN=<repo>/target/release/sixgate   (missing: sixgate is skipped, said loudly)
#   SIXGATE_STATE_DIR=<work>/sixgate/state      [state] dir (the registration store). The work
#                               dir is under /tmp (mktemp): put it on the disk you mean to measure
#   SIXGATE_LOG_LEVEL=info      [log] level; at info sixgate logs its counters at shutdown, from
#                               which the store's commits and changes over the run are printed
#                               (a registration itself logs at debug)
#   SIXGATE_EXTRA_TOML=         TOML inserted into sixgate's config before the [[users]] tables
#                               (e.g. $'[limits]\nmax_transactions = 2000000')
#   SIXGATE_COMMITS_CMD=        HOOK for the store commit rate: a shell command printing the
#                               running sixgate's cumulative number of store commits (last number
#                               of its output is used); run with SIXGATE_PID, SIXGATE_STATE_DIR
#                               and SIXGATE_WORK set, before and after every step. Empty: the
#                               commits column shows "-". The whole run's figures come from the
#                               shutdown counter dump (sixgate_store_commits_total and
#                               sixgate_store_changes_total, log level info) in any case.
#   KAMAILIO_BIN=/usr/sbin/kamailio   KAMAILIO_MODULES=/usr/lib/x86_64-linux-gnu/kamailio/modules
#   KAMAILIO_CHILDREN=8         UDP worker processes (one 127.0.0.1 socket). On a 2-core VM 8 did
#                               best: 2 and 4 lost datagrams at 20 000-30 000/s with CPU to
#                               spare, 16 starved the sipps
#   KAMAILIO_SHM_MB=2048        Kamailio shared memory (users htable + usrloc live there; ~1.2 KB
#                               per binding, 0.3 KB per user; untouched pages cost nothing)
#   SIPP=/usr/bin/sipp          sipp 3.6.1 (Debian sip-tester)
#   SIPP_BUFF=4194304           sipp's socket buffers (-buff_size; sipp's default 64 KiB overflows
#                               at ~10 000 registrations/s per instance); capped by
#                               net.core.rmem_max/wmem_max. Kamailio gets the same maximum
#                               (maxbuffer), sixgate sets 4 MiB itself
#   PORT_BASE=random free       registrar=BASE, sipp k: SIP BASE+1+k, media BASE+20+4k,
#                               control BASE+60+k
#   KEEP=1                      keep the work directory (configs, logs, injection files, sipp stats)
#
# Kamailio (5.6, no database): sl + auth + usrloc (db_mode=0, memory only) + registrar + htable.
# The users live in an htable filled at start-up (user -> "pw-<user>"), looked up per request
# with $au, checked with pv_www_authenticate (qop=auth), $au must equal the To user, then
# save("location"). sixgate gets the same users as [[users]] tables.
#
# CPU: the registrar sampled just before the sipps start and SETTLE s after the last one ends,
# from /proc/PID/task/TID/schedstat (on-CPU ns; falls back to utime+stime ticks of /proc/PID/stat
# when a thread died in between), summed over every process whose parent chain reaches the
# registrar's pid (Kamailio forks its workers). It includes the registrar's idle cost, printed once
# per registrar as "idle". sipp figures are each instance's rusage (bash `times`), so they include
# sipp's start-up (reading the injection file) and exit. host% = busy time of the whole machine
# over the same window (root cpuacct cgroup, else /proc/stat), as % of all cores: it includes
# anything else running.
# "fail%" counts every attempted registration that did not succeed (failed, or unfinished when
# sipp stopped). reg/s = successful registrations / wall time of the step (start of the sipps to
# the exit of the last one). r_drop / s_drop: UDP datagrams dropped for a full receive buffer
# at the registrar's socket (ss) / anywhere else (/proc/net/snmp RcvbufErrors minus r_drop:
# the sipps' sockets, as nothing else is loaded). "limit" says what held the rate down when
# fewer than 99 % of the offered registrations succeeded or the rate fell below 95 % of the
# offered one: "sipp" when an instance used >= 90 % of a core, else "host-cpu" when the machine
# was >= 90 % busy, else "sipp-drops" when more datagrams were lost at the sipps than at the
# registrar, else "registrar" (answers late or lost with CPU to spare); "-" when the offered
# rate was met.
# Memory: PSS of the registrar's process tree (shared pages, e.g. Kamailio's shared memory,
# divided among the processes that map them, so the sum counts them once; for sixgate, one
# process, PSS = RSS but for library pages shared with other processes). B/bind = memory growth
# over the step / successful registrations of the step; it includes state that is only
# transient (sixgate's server transactions, 32 s), which the settled figure does not.
# Exit status: 1 when a registrar that should run fails to start, fails the smoke call or dies;
# 0 otherwise (a missing binary is a skip, reported); 2 on bad usage.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATES=${RATES:-"2000 5000 10000 20000 30000"}
DURATION=${DURATION:-5}
SIPP_INSTANCES=${SIPP_INSTANCES:-2}
SIPP_IP_SPREAD=${SIPP_IP_SPREAD:-1}
SETTLE=${SETTLE:-1}
MEM_SETTLE=${MEM_SETTLE:-35}
EXPIRES=${EXPIRES:-3600}
DOMAIN=${DOMAIN:-localhost}
SIPP=${SIPP:-/usr/bin/sipp}
SIPP_BUFF=${SIPP_BUFF:-4194304}
KAMAILIO_BIN=${KAMAILIO_BIN:-/usr/sbin/kamailio}
KAMAILIO_MODULES=${KAMAILIO_MODULES:-/usr/lib/x86_64-linux-gnu/kamailio/modules}
KAMAILIO_CHILDREN=${KAMAILIO_CHILDREN:-8}
KAMAILIO_SHM_MB=${KAMAILIO_SHM_MB:-2048}
SIXGATE_BIN=${SIXGATE_BIN:-$ROOT/target/release/sixgate}
SIXGATE_LOG_LEVEL=${SIXGATE_LOG_LEVEL:-info}
SIXGATE_EXTRA_TOML=${SIXGATE_EXTRA_TOML:-}
# HOOK (store commit rate): see the header; empty = not measured.
SIXGATE_COMMITS_CMD=${SIXGATE_COMMITS_CMD:-}
SF=$ROOT/benches/sipp/reg_load_auth.xml
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)

PROXIES=("$@")
[ ${#PROXIES[@]} -eq 0 ] && PROXIES=(kamailio sixgate)
for p in "${PROXIES[@]}"; do
    case $p in kamailio|sixgate) ;; *) echo "unknown registrar '$p' (kamailio|sixgate)" >&2; exit 2 ;; esac
done
case $SIPP_INSTANCES in [1-8]) ;; *) echo "SIPP_INSTANCES must be 1..8 (got $SIPP_INSTANCES)" >&2; exit 2 ;; esac
for r in $RATES; do
    case $r in ''|*[!0-9]*) echo "RATES: '$r' is not a whole number" >&2; exit 2 ;; esac
    [ "$r" -ge "$SIPP_INSTANCES" ] || { echo "RATES: $r is below SIPP_INSTANCES=$SIPP_INSTANCES" >&2; exit 2; }
done
[ -x "$SIPP" ] || { echo "sipp not found at $SIPP (Debian package sip-tester)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/register_load.XXXXXX)
SIXGATE_STATE_DIR=${SIXGATE_STATE_DIR:-$WORK/sixgate/state}
PIDS=()          # every process we started and have not reaped yet

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local f
    reap_all
    for f in "$WORK"/sipp.*.pid; do
        [ -s "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null
    done
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# process bookkeeping, ports, CPU sampling (shared with the other load script)
# shellcheck source=benches/load_common.sh
source "$ROOT/benches/load_common.sh"

# Whole-machine CPU: "busy_s capacity_s". Preferred: the root cpuacct cgroup's on-CPU nanoseconds
# of every task (cgroup v1, precise); else /proc/stat's "cpu" line, which is tick-sampled: on a VM
# whose timers wake sipp and the registrar in step with the tick it misses most of their work
# (seen: 1 % reported for 45 % of a core).
CPUACCT=/sys/fs/cgroup/cpuacct/cpuacct.usage
host_sample() {
    if [ -r "$CPUACCT" ]; then
        awk -v ns="$(cat "$CPUACCT")" -v t="$(now)" -v n="$NCPU" 'BEGIN { printf "%.6f %.6f\n", ns / 1e9, t * n }'
    else
        awk -v hz="$HZ" '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; printf "%.2f %.2f\n", (t - $5 - $6) / hz, t / hz; exit }' /proc/stat
    fi
}
host_source() { if [ -r "$CPUACCT" ]; then echo "cpuacct cgroup"; else echo "/proc/stat ticks, may under-count"; fi; }
# host_busy_pct "busy0 cap0" "busy1 cap1": busy share of all cores in %.
host_busy_pct() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ")
    if (y[2] > x[2]) printf "%.0f", (y[1] - x[1]) * 100 / (y[2] - x[2]); else print 0 }'; }


# UDP datagrams dropped for a full receive buffer: the whole machine's (/proc/net/snmp
# RcvbufErrors, IPv4 and IPv6) and those of the registrar's socket (ss skmem d).
udp_drops_all() {
    { awk '/^Udp:/ && $2 ~ /^[0-9]/ { print $6 }' /proc/net/snmp; awk '$1 == "Udp6RcvbufErrors" { print $2 }' /proc/net/snmp6 2>/dev/null; } |
        awk '{ s += $1 } END { print s + 0 }'
}
udp_drops_port() { ss -Huamn "sport = :$1" 2>/dev/null | grep -o ',d[0-9]*)' | tr -dc '0-9\n' | awk '{ s += $1 } END { print s + 0 }'; }


pct() { awk -v s="$1" -v w="$2" 'BEGIN { if (w > 0) printf "%.0f", s * 100 / w; else print "-" }'; }

# ---------------------------------------------------------------- ports
if [ -n "${PORT_BASE:-}" ]; then
    BASE=$PORT_BASE
else
    for _ in $(seq 50); do
        BASE=$(( 10000 + (RANDOM % 200) * 100 ))
        ok=1; for o in $(seq 0 99); do port_free $((BASE + o)) || { ok=0; break; }; done
        [ $ok = 1 ] && break
    done
fi
PPORT=$BASE
sipp_ip() { if [ "$SIPP_IP_SPREAD" = 1 ]; then echo "127.0.0.$(($1 + 1))"; else echo 127.0.0.1; fi; }
sipp_port() { echo $((BASE + 1 + $1)); }
sipp_mp() { echo $((BASE + 20 + 4 * $1)); }
sipp_cp() { echo $((BASE + 60 + $1)); }

# ---------------------------------------------------------------- users and injection files
# Step s (1-based) registers RATE*DURATION users after those of the steps before it; user 0 is
# the smoke call's. Instance k of a step gets a contiguous slice, and RATE/INSTANCES (the first
# RATE%INSTANCES instances one more per second).
TOTAL_USERS=1
for r in $RATES; do TOTAL_USERS=$((TOTAL_USERS + r * DURATION)); done
UW=$(( ${#TOTAL_USERS} > 6 ? ${#TOTAL_USERS} : 6 ))   # digits of the user numbers
mkdir -p "$WORK/users"
write_csv() {  # write_csv FILE FIRST COUNT
    awk -v first="$2" -v n="$3" -v w="$UW" 'BEGIN { print "SEQUENTIAL"
        for (i = first; i < first + n; i++) { u = sprintf("user%0" w "d", i); print u ";pw-" u ";" } }' > "$1"
}
write_csv "$WORK/users/smoke.csv" 0 1
user_name() { printf 'user%0*d' "$UW" "$1"; }
declare -A R   # results: R[proxy:step:field], and per step plan: R[plan:step:*]
step=0; next_user=1
for r in $RATES; do
    step=$((step + 1))
    R[plan:$step:rate]=$r
    for k in $(seq 0 $((SIPP_INSTANCES - 1))); do
        rk=$((r / SIPP_INSTANCES + (k < r % SIPP_INSTANCES ? 1 : 0)))
        R[plan:$step:rate$k]=$rk
        R[plan:$step:calls$k]=$((rk * DURATION))
        write_csv "$WORK/users/s${step}_i$k.csv" "$next_user" $((rk * DURATION))
        next_user=$((next_user + rk * DURATION))
    done
done
STEPS=$step

# ---------------------------------------------------------------- registrars
write_kamailio_cfg() {
    local bits=10
    while [ $((1 << bits)) -lt "$TOTAL_USERS" ] && [ $bits -lt 20 ]; do bits=$((bits + 1)); done
    cat > "$1" <<EOF
#!KAMAILIO
# written by benches/register_load.sh: registrar without a database. Users $(user_name 0)..$(user_name $((TOTAL_USERS - 1)))
# with password "pw-<user>" in an htable filled at start-up; digest (401, MD5, qop=auth);
# bindings in memory only (usrloc db_mode=0).
$(kamailio_globals)
# the start-up loop below runs once per user
max_while_loops=$((TOTAL_USERS + 10))
listen=udp:127.0.0.1:$PPORT
# socket receive buffer up to this (default 256 KiB); sixgate sets 4 MiB
maxbuffer=$SIPP_BUFF

mpath="$KAMAILIO_MODULES"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "htable.so"
loadmodule "auth.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"

modparam("htable", "htable", "users=>size=$bits;")
modparam("usrloc", "db_mode", 0)
# 2^bits AOR slots (the default 2^10 would make long chains with this many users)
modparam("usrloc", "hash_size", $bits)
modparam("registrar", "min_expires", 60)
modparam("registrar", "max_expires", 3600)
modparam("registrar", "default_expires", 3600)

event_route[htable:mod-init] {
    \$var(i) = 0;
    while (\$var(i) < $TOTAL_USERS) {
        \$var(n) = 1$(printf '%0*d' "$UW" 0) + \$var(i);
        \$var(u) = "user" + \$(var(n){s.substr,1,0});
        \$sht(users=>\$var(u)) = "pw-" + \$var(u);
        \$var(i) = \$var(i) + 1;
    }
    xlog("L_WARN", "register_load: users loaded: \$var(i), last \$var(u)\n");
}

request_route {
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
    if (!is_method("REGISTER")) { sl_send_reply("405", "Method Not Allowed"); exit; }
    # flags 1: qop=auth in the challenge, like sixgate's
    if (!is_present_hf("Authorization")) { www_challenge("\$td", "1"); exit; }
    \$avp(pass) = \$sht(users=>\$au);
    if (\$avp(pass) == \$null || !pv_www_authenticate("\$td", "\$avp(pass)", "0")) {
        www_challenge("\$td", "1");
        exit;
    }
    if (\$au != \$tU) { sl_send_reply("403", "Forbidden"); exit; }
    consume_credentials();
    if (!save("location")) { sl_reply_error(); }
    exit;
}
EOF
}

write_sixgate_cfg() {
    {
        cat <<EOF
# written by benches/register_load.sh: registrar for $(user_name 0)..$(user_name $((TOTAL_USERS - 1))),
# password "pw-<user>", one UDP socket.
[sip]
domains = ["$DOMAIN"]

[[listen]]
transport = "udp"
address = "127.0.0.1"
port = $PPORT

[state]
# the registration store
dir = "$SIXGATE_STATE_DIR"

[registrar]
min_expires = 60
max_expires = 3600
# no keepalives (Kamailio sends none either; sipp's Via and Contact name its source, so no
# binding counts as NATed anyway)
keepalive_interval_secs = 0

[auth]
realm = "$DOMAIN"
# sipp sends the Request-URI as the digest uri thanks to -auth_uri (see the sipp command)
digest_uri = "strict"
# sipp 3.6 answers only the first challenge and only MD5
algorithms = ["MD5"]
# 0 = no brute-force ban (every registration starts with a 401; the load comes from few sources)
ban_failures = 0

[log]
level = "$SIXGATE_LOG_LEVEL"

EOF
        [ -n "$SIXGATE_EXTRA_TOML" ] && printf '%s\n\n' "$SIXGATE_EXTRA_TOML"
        awk -v n="$TOTAL_USERS" -v w="$UW" 'BEGIN { for (i = 0; i < n; i++) {
            u = sprintf("user%0" w "d", i); printf "[[users]]\nusername = \"%s\"\npassword = \"pw-%s\"\n", u, u } }'
    } > "$1"
}

PROXY_PID=
start_proxy() {  # start_proxy NAME: sets PROXY_PID; returns 1 on failure, 2 when skipped
    local name=$1 dir=$WORK/$1 cfg
    mkdir -p "$dir"
    case $name in
    kamailio)
        [ -x "$KAMAILIO_BIN" ] || { echo "SKIP kamailio: $KAMAILIO_BIN not found"; return 2; }
        cfg=$dir/kamailio.cfg
        write_kamailio_cfg "$cfg"
        if ! "$KAMAILIO_BIN" -c -f "$cfg" > "$dir/check.log" 2>&1; then
            echo "kamailio: config check failed:"; tail -20 "$dir/check.log"; return 1
        fi
        set -- "$KAMAILIO_BIN" -DD -E -f "$cfg" -Y "$dir" -w "$dir" -m "$KAMAILIO_SHM_MB" -M 32
        ;;
    sixgate)
        [ -x "$SIXGATE_BIN" ] || {
            echo "SKIP sixgate: no executable at SIXGATE_BIN=$SIXGATE_BIN (build it with cargo build --release, or set SIXGATE_BIN)"
            return 2; }
        cfg=$dir/sixgate.toml
        mkdir -p "$SIXGATE_STATE_DIR"
        if [ -n "$(ls -A "$SIXGATE_STATE_DIR")" ]; then
            echo "WARNING: SIXGATE_STATE_DIR=$SIXGATE_STATE_DIR is not empty: stored bindings are loaded at start" \
                "and re-registering them is a refresh, not a new binding (memory per binding is off)"
        fi
        write_sixgate_cfg "$cfg"
        if ! "$SIXGATE_BIN" check-config "$cfg" > "$dir/check.log" 2>&1; then
            echo "sixgate: config check failed:"; head -20 "$dir/check.log"; return 1
        fi
        set -- "$SIXGATE_BIN" run -c "$cfg"
        ;;
    esac
    echo "registrar $name (config $cfg, $TOTAL_USERS users):"
    show_cmd "$@"
    "$@" > "$dir/proxy.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    # ready: socket bound, and for Kamailio the user table filled (its socket is bound before)
    for _ in $(seq 600); do
        kill -0 "$PROXY_PID" 2>/dev/null || break
        if udp_bound 127.0.0.1 "$PPORT"; then
            if [ "$name" != kamailio ] || grep -q 'register_load: users loaded' "$dir/proxy.log"; then
                return 0
            fi
        fi
        sleep 0.1
    done
    echo "$name failed to start (listening on udp 127.0.0.1:$PPORT) within 60 s; log:"
    tail -20 "$dir/proxy.log"
    stop "$PROXY_PID"
    return 1
}

# ---------------------------------------------------------------- sipp
sipp_cmd() {  # sipp_cmd K CSV RATE CALLS DIR [extra args...]: sets SIPP_CMD
    local k=$1 csv=$2 rate=$3 calls=$4 dir=$5
    shift 5
    local limit=$((rate * 2 > 15000 ? 15000 : rate * 2 > 100 ? rate * 2 : 100))
    # shellcheck disable=SC2054  # the comma belongs to sipp's -default_behaviors value
    # (no "bye": sipp would send a BYE for every failed registration)
    SIPP_CMD=("$SIPP" -sf "$SF" -inf "$csv" -key domain "$DOMAIN" -key expires "$EXPIRES"
        -auth_uri "$DOMAIN" -buff_size "$SIPP_BUFF" -t u1 -i "$(sipp_ip "$k")" -p "$(sipp_port "$k")" -mp "$(sipp_mp "$k")" -cp "$(sipp_cp "$k")"
        "127.0.0.1:$PPORT" -r "$rate" -rp 1000 -m "$calls" -l "$limit"
        -nostdin -timeout "$((DURATION + 30))s" -recv_timeout 5000 -default_behaviors abortunexp,pingreply
        -trace_stat -stf "$dir/sipp$k.stat.csv" -fd 1
        -trace_err -error_file "$dir/sipp$k.err.log" -max_log_size 1000000 "$@")
}

# Column of FIELD in sipp's ;-separated stat CSV, value from the last line.
stat_field() {
    awk -F';' -v k="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == k) c = i; next } { v = $c } END { print v + 0 }' "$1"
}
# Mean of ResponseTime1(C) ("hh:mm:ss:usec") in ms from the last line, or "-".
stat_rtd_ms() {
    awk -F';' -v k='ResponseTime1(C)' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == k) c = i; next } { v = $c }
        END { n = split(v, a, ":"); if (n == 4) printf "%.2f", (a[1] * 3600 + a[2] * 60 + a[3]) * 1000 + a[4] / 1000; else print "-" }' "$1"
}

# One registration with a message trace: does the registrar answer the flow? Shows the challenge
# and the digest uri sipp sent.
smoke() {  # smoke NAME
    local name=$1 dir=$WORK/$1/smoke rc
    mkdir -p "$dir"
    sipp_cmd 0 "$WORK/users/smoke.csv" 1 1 "$dir" -trace_msg -message_file "$dir/messages.log"
    "${SIPP_CMD[@]}" > "$dir/sipp.out" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait "$pid"; rc=$?
    forget_pid "$pid"
    local chal uri
    chal=$(grep -m1 '^WWW-Authenticate:' "$dir/messages.log" 2>/dev/null | tr -d '\r')
    uri=$(grep -m1 '^Authorization:' "$dir/messages.log" 2>/dev/null | tr -d '\r' | grep -o 'uri="[^"]*"')
    echo "  smoke registration of $(user_name 0): sipp exit $rc; challenge: ${chal:-none}"
    echo "  digest ${uri:-uri: none sent}, Request-URI sip:$DOMAIN"
    if [ "$rc" != 0 ]; then
        echo "  $name did not complete REGISTER -> 401 -> REGISTER -> 200; the exchange (KEEP=1 keeps $dir/messages.log):"
        tr -d '\r' < "$dir/messages.log" 2>/dev/null |
            grep -E '^(REGISTER |SIP/2.0 |WWW-Authenticate:|Authorization:|Unexpected|Dead call|.*message (sent|received))' |
            tail -24 | sed 's/^/    /'
        grep -v '^$' "$dir/sipp0.err.log" 2>/dev/null | head -5 | sed 's/^/    /'
        return 1
    fi
}

commits_sample() {  # cumulative store commits of the running sixgate (HOOK), or empty
    [ -n "$SIXGATE_COMMITS_CMD" ] || return 0
    SIXGATE_PID=$PROXY_PID SIXGATE_STATE_DIR=$SIXGATE_STATE_DIR SIXGATE_WORK=$WORK/sixgate \
        bash -c "$SIXGATE_COMMITS_CMD" 2>/dev/null | grep -oE '[0-9]+' | tail -1
}

# ---------------------------------------------------------------- one load step
run_step() {  # run_step PROXY STEP
    local name=$1 s=$2 rate=${R[plan:$2:rate]} dir=$WORK/$1/s$2
    mkdir -p "$dir"
    local k cmds=() offered=$((rate * DURATION))
    for k in $(seq 0 $((SIPP_INSTANCES - 1))); do
        sipp_cmd "$k" "$WORK/users/s${s}_i$k.csv" "${R[plan:$s:rate$k]}" "${R[plan:$s:calls$k]}" "$dir"
        [ "$s" = 1 ] && { echo "  sipp $k:"; show_cmd "${SIPP_CMD[@]}"; }
        cmds[k]=$(printf '%q ' "${SIPP_CMD[@]}")
    done
    [ "$s" = 1 ] && header

    local mem0 c0 c1 h0 h1 t0 t_end t1
    mem0=$(tree_pss_kb "$PROXY_PID")
    c0=$(commits_sample)
    local d0 dp0 d1 dp1
    d0=$(udp_drops_all); dp0=$(udp_drops_port "$PPORT")
    cpu_sample "$PROXY_PID" > "$dir/proxy.cpu0"; h0=$(host_sample); t0=$(now)
    # each sipp in a subshell so that `times` there reports that sipp's rusage alone; its pid
    # goes to a file so that cleanup can stop it on an interrupt
    local subs=()
    for k in $(seq 0 $((SIPP_INSTANCES - 1))); do
        (
            eval "${cmds[k]}" > "$dir/sipp$k.out" 2>&1 &
            echo $! > "$WORK/sipp.$k.pid"
            wait $!; rc=$?
            times > "$dir/sipp$k.times"; echo "$rc" > "$dir/sipp$k.rc"
        ) &
        subs+=($!)
    done
    wait "${subs[@]}"
    rm -f "$WORK"/sipp.*.pid
    t_end=$(now)
    sleep "$SETTLE"
    cpu_sample "$PROXY_PID" > "$dir/proxy.cpu1"; h1=$(host_sample); t1=$(now)
    c1=$(commits_sample)
    d1=$(udp_drops_all); dp1=$(udp_drops_port "$PPORT")
    local mem1; mem1=$(tree_pss_kb "$PROXY_PID")

    local att=0 ok=0 rtx=0 sipp_s=0 sipp_max=0 rtd_w=0 rtd_n=0 rcs="" a o x sk rtd rc
    local wall window
    wall=$(awk -v a="$t0" -v b="$t_end" 'BEGIN { printf "%.2f", b - a }')
    window=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    for k in $(seq 0 $((SIPP_INSTANCES - 1))); do
        rc=$(cat "$dir/sipp$k.rc" 2>/dev/null); rc=${rc:-?}
        case $rc in 0|1) ;; *) rcs="$rcs sipp$k=$rc" ;; esac
        if [ -s "$dir/sipp$k.stat.csv" ]; then
            a=$(stat_field "$dir/sipp$k.stat.csv" TotalCallCreated)
            o=$(stat_field "$dir/sipp$k.stat.csv" 'SuccessfulCall(C)')
            x=$(stat_field "$dir/sipp$k.stat.csv" 'Retransmissions(C)')
            rtd=$(stat_rtd_ms "$dir/sipp$k.stat.csv")
            att=$((att + a)); ok=$((ok + o)); rtx=$((rtx + x))
            [ "$rtd" != - ] && { rtd_w=$(awk -v w="$rtd_w" -v r="$rtd" -v n="$o" 'BEGIN { print w + r * n }'); rtd_n=$((rtd_n + o)); }
        else
            echo "  (no stat file from sipp $k; exit $rc):"; tail -5 "$dir/sipp$k.out" | sed 's/^/    /'
        fi
        # bash `times`, second line = children (this sipp): "0m1.234s 0m0.056s"
        sk=$(sed -n 2p "$dir/sipp$k.times" 2>/dev/null | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } printf "%.3f", s }')
        sk=${sk:-0}
        sipp_s=$(awk -v a="$sipp_s" -v b="$sk" 'BEGIN { printf "%.3f", a + b }')
        sipp_max=$(awk -v m="$sipp_max" -v b="$sk" -v w="$wall" 'BEGIN { p = w > 0 ? b * 100 / w : 0; printf "%.0f", (p > m ? p : m) }')
    done
    local proxy_s; proxy_s=$(cpu_delta "$dir/proxy.cpu0" "$dir/proxy.cpu1")
    local key=$name:$s
    R[$key:att]=$att R[$key:ok]=$ok R[$key:proxy_s]=$proxy_s R[$key:sipp_s]=$sipp_s
    R[$key:failpct]=$(awk -v a="$att" -v o="$ok" 'BEGIN { if (a > 0) printf "%.1f", (a - o) * 100 / a; else print "-" }')
    R[$key:regps]=$(awk -v o="$ok" -v w="$wall" 'BEGIN { if (w > 0) printf "%.0f", o / w; else print "-" }')
    R[$key:proxy_us]=$(awk -v s="$proxy_s" -v n="$att" 'BEGIN { if (n > 0) printf "%.0f", s * 1e6 / n; else print "-" }')
    R[$key:sipp_us]=$(awk -v s="$sipp_s" -v n="$att" 'BEGIN { if (n > 0) printf "%.0f", s * 1e6 / n; else print "-" }')
    R[$key:proxy_pc]=$(pct "$proxy_s" "$window")
    R[$key:sipp_pc]=$(pct "$sipp_s" "$wall")
    R[$key:sipp_max]=$sipp_max
    R[$key:host_pc]=$(host_busy_pct "$h0" "$h1")
    R[$key:rtd]=$(awk -v w="$rtd_w" -v n="$rtd_n" 'BEGIN { if (n > 0) printf "%.1f", w / n; else print "-" }')
    R[$key:mem0]=$mem0 R[$key:mem1]=$mem1 R[$key:window]=$window
    # drops at the registrar's socket / elsewhere (the sipps' sockets: nothing else is loaded)
    R[$key:rdrop]=$((dp1 - dp0)) R[$key:sdrop]=$((d1 - d0 - (dp1 - dp0)))
    [ "${R[$key:sdrop]}" -lt 0 ] && R[$key:sdrop]=0
    R[$key:bpb]=$(awk -v a="$mem0" -v b="$mem1" -v n="$ok" 'BEGIN { if (n > 0) printf "%.0f", (b - a) * 1024 / n; else print "-" }')
    R[$key:commits]=-
    if [ -n "$c0" ] && [ -n "$c1" ]; then
        R[$key:commits]=$(awk -v a="$c0" -v b="$c1" -v w="$window" -v o="$ok" 'BEGIN {
            d = b - a; if (w > 0) printf "%.0f/s", d / w; if (d > 0) printf " (%.1f reg/commit)", o / d }')
    fi
    R[$key:store]=-
    [ "$name" = sixgate ] && [ -d "$SIXGATE_STATE_DIR" ] && R[$key:store]=$(du -sk "$SIXGATE_STATE_DIR" | awk '{ print $1 }')
    # what held the rate down
    R[$key:limit]=$(awk -v o="$ok" -v m="$offered" -v rps="${R[$key:regps]}" -v r="$rate" -v sm="$sipp_max" \
        -v host="${R[$key:host_pc]}" -v rd="${R[$key:rdrop]}" -v sd="${R[$key:sdrop]}" 'BEGIN {
            if (o >= 0.99 * m && rps >= 0.95 * r) { print "-"; exit }
            if (sm >= 90) print "sipp"; else if (host >= 90) print "host-cpu"
            else if (sd > rd) print "sipp-drops"; else print "registrar" }')

    printf '%-9s %6s %8s %9s %9s %6s %7s %6s %6s %6s %7s %8s %8s %7s %7s %7s %6s %8s %8s %7s %9s %-10s %s\n' \
        "$name" "$rate" "$offered" "$att" "$ok" "${R[$key:failpct]}" "$rtx" "${R[$key:rtd]}" "${R[$key:rdrop]}" "${R[$key:sdrop]}" "${R[$key:regps]}" \
        "${R[$key:proxy_us]}" "${R[$key:sipp_us]}" "${R[$key:proxy_pc]}" "${R[$key:sipp_pc]}" "$sipp_max" "${R[$key:host_pc]}" \
        $((mem0 / 1024)) $((mem1 / 1024)) "${R[$key:bpb]}" "${R[$key:store]}" "${R[$key:limit]}" "${R[$key:commits]}"
    [ -n "$rcs" ] && echo "    sipp exit status:$rcs (0 all ok, 1 some failed, 97/99 stopped early, 255 fatal error)"
    if [ "$att" -gt "$ok" ]; then
        for k in $(seq 0 $((SIPP_INSTANCES - 1))); do
            if [ -s "$dir/sipp$k.err.log" ]; then
                echo "    first errors of sipp $k:"; grep -v '^$' "$dir/sipp$k.err.log" | head -3 | sed 's/^/      /'
                break
            fi
        done
    fi
}

header() {
    printf '%-9s %6s %8s %9s %9s %6s %7s %6s %6s %6s %7s %8s %8s %7s %7s %7s %6s %8s %8s %7s %9s %-10s %s\n' \
        registrar rate offered attempted ok fail% retrans rtd_ms r_drop s_drop reg/s reg_us sipp_us reg%c sipp%c sippmax host% \
        mem0_mb mem1_mb B/bind store_kb limit commits
}

# ---------------------------------------------------------------- main
echo "REGISTER load: rates [$RATES] registrations/s, ${DURATION}s each, $SIPP_INSTANCES sipp instance(s)," \
    "$TOTAL_USERS users; registrar 127.0.0.1:$PPORT; $NCPU CPUs; work dir $WORK"
echo "(retrans = sipp retransmissions; rtd_ms = mean first REGISTER -> 200, the 401 round included;"
echo " r_drop, s_drop = UDP datagrams dropped for a full receive buffer at the registrar's socket / elsewhere (the sipps);"
echo " reg/s = successful registrations per second of wall time; reg_us, sipp_us = CPU µs per attempted"
echo " registration of the registrar (process tree) and of all sipps; reg%c, sipp%c = CPU as % of one core"
echo " (sippmax: the busiest sipp); host% = the whole machine's busy share of all $NCPU cores ($(host_source));"
echo " mem0/mem1 = registrar PSS before/after the step; B/bind = its growth per successful registration;"
echo " store_kb = size of sixgate's state dir; limit = what held the rate down; commits = store commits"
echo " (hook SIXGATE_COMMITS_CMD))"
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
    [ "$name" = sixgate ] && echo "  state dir $SIXGATE_STATE_DIR ($(stat -f -c %T "$SIXGATE_STATE_DIR" 2>/dev/null) file system)"
    sleep 1
    cpu_sample "$PROXY_PID" > "$WORK/$name/idle.cpu0"; sleep 1; cpu_sample "$PROXY_PID" > "$WORK/$name/idle.cpu1"
    R[$name:idle]=$(cpu_delta "$WORK/$name/idle.cpu0" "$WORK/$name/idle.cpu1" | awk '{ printf "%.1f", $1 * 1000 }')
    R[$name:membase]=$(tree_pss_kb "$PROXY_PID")
    echo "  idle: ${R[$name:idle]} ms CPU per second, $(wc -l < "$WORK/$name/idle.cpu1") process(es), memory $((${R[$name:membase]} / 1024)) MB (PSS)"
    if ! smoke "$name"; then
        status=1; stop "$PROXY_PID"; continue
    fi
    died=0
    for s in $(seq "$STEPS"); do
        if ! kill -0 "$PROXY_PID" 2>/dev/null; then
            echo "$name died during the run; log:"; tail -20 "$WORK/$name/proxy.log"; status=1; died=1; break
        fi
        run_step "$name" "$s"
    done
    if [ $died = 0 ] && kill -0 "$PROXY_PID" 2>/dev/null; then
        # settled memory: transaction state of the last step gone, only the bindings left
        total_ok=1
        for s in $(seq "$STEPS"); do total_ok=$((total_ok + ${R[$name:$s:ok]:-0})); done
        echo "  waiting ${MEM_SETTLE}s for transient state to expire before the settled memory sample..."
        sleep "$MEM_SETTLE"
        R[$name:memend]=$(tree_pss_kb "$PROXY_PID")
        R[$name:settled]=$(awk -v a="${R[$name:membase]}" -v b="${R[$name:memend]}" -v n="$total_ok" \
            'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
        R[$name:bindings]=$total_ok
        echo "  settled: memory $((${R[$name:membase]} / 1024)) MB -> $((${R[$name:memend]} / 1024)) MB for $total_ok bindings = ${R[$name:settled]} B per binding"
        RAN+=("$name")
    else
        status=1
    fi
    stop "$PROXY_PID"
    if [ "$name" = sixgate ]; then
        [ -d "$SIXGATE_STATE_DIR" ] && echo "  store after shutdown: $(du -sk "$SIXGATE_STATE_DIR" | awk '{ print $1 }') KB in $SIXGATE_STATE_DIR"
        # the whole run's store figures from the shutdown counter dump (log level info)
        commits=$(awk '$1 == "sixgate_store_commits_total" { print $2 }' "$WORK/$name/proxy.log" | tail -1)
        changes=$(awk '$1 == "sixgate_store_changes_total" { print $2 }' "$WORK/$name/proxy.log" | tail -1)
        if [ -n "$commits" ]; then
            loadtime=0
            for s in $(seq "$STEPS"); do loadtime=$(awk -v a="$loadtime" -v b="${R[$name:$s:window]:-0}" 'BEGIN { print a + b }'); done
            echo "  store over the run (shutdown counters): $commits commits, ${changes:-?} binding changes" \
                "($(awk -v c="$commits" -v n="${changes:-0}" 'BEGIN { if (c > 0) printf "%.1f", n / c; else print "-" }') per commit)," \
                "$(awk -v c="$commits" -v t="$loadtime" 'BEGIN { if (t > 0) printf "%.0f", c / t; else print "-" }') commits/s over the ${loadtime}s of load steps"
            grep -E '^sixgate_store_commit_failures_total [1-9]' "$WORK/$name/proxy.log" | sed 's/^/  /'
        else
            echo "  store commits: no shutdown counter dump in the log (needs SIXGATE_LOG_LEVEL=info)"
        fi
    fi
    if grep -qE 'ERROR|CRITICAL|panicked' "$WORK/$name/proxy.log"; then
        echo "  $name log has errors:"; grep -E 'ERROR|CRITICAL|panicked' "$WORK/$name/proxy.log" | head -5 | sed 's/^/    /'
    fi
done

# ---------------------------------------------------------------- summary
echo
[ ${#RAN[@]} -gt 0 ] && echo "summary per step (reg_us = registrar CPU µs per registration; limit: see the header):"
[ ${#RAN[@]} -gt 0 ] && for s in $(seq "$STEPS"); do
    line="  rate ${R[plan:$s:rate]}:"
    for name in "${RAN[@]}"; do
        k=$name:$s
        [ -n "${R[$k:att]:-}" ] || continue
        line="$line  $name: ${R[$k:regps]} reg/s, fail ${R[$k:failpct]}%, ${R[$k:proxy_us]} µs/reg, registrar ${R[$k:proxy_pc]}% / sippmax ${R[$k:sipp_max]}% / host ${R[$k:host_pc]}%, limit ${R[$k:limit]};"
    done
    k=kamailio:$s; g=sixgate:$s
    if [ -n "${R[$k:proxy_us]:-}" ] && [ -n "${R[$g:proxy_us]:-}" ]; then
        line="$line  sixgate/kamailio CPU per registration = $(cpu_ratio "$g" "$k")"
    fi
    echo "$line"
done
for name in "${RAN[@]}"; do
    echo "  $name: settled memory per binding ${R[$name:settled]} B (${R[$name:bindings]} bindings)"
done
[ ${#RAN[@]} -lt ${#PROXIES[@]} ] && echo "note: not run: $(comm -23 <(printf '%s\n' "${PROXIES[@]}" | sort) <(printf '%s\n' "${RAN[@]}" | sort) | tr '\n' ' ')"
exit $status
