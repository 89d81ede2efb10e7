# Shell helpers shared by the load scripts (benches/proxy_load.sh, benches/register_load.sh):
# process bookkeeping, port checks and CPU sampling of a process tree. Sourced, not run; expects
# PIDS (an array of our background pids) and HZ (getconf CLK_TCK) from the script.
# shellcheck shell=bash

forget_pid() { local p keep=(); for p in "${PIDS[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done; PIDS=("${keep[@]}"); }

stop() {  # stop one of our processes (TERM, then KILL after 3 s) and reap it
    local pid=$1
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    forget_pid "$pid"
}

show_cmd() { printf '  $'; printf ' %q' "$@"; printf '\n'; }

udp_bound() {  # udp_bound ADDR PORT: is a UDP socket bound there?
    ss -Hlun 2>/dev/null | awk -v a="$1:$2" '$4 == a { f = 1 } END { exit !f }'
}

port_free() { ! ss -Hlun 2>/dev/null | awk -v p="$1" '{ n = split($4, x, ":"); if (x[n] == p) f = 1 } END { exit !f }'; }

# CPU sample of PID and all its descendants (one pass over /proc for the tree): a line per
# process, "pid ticks tid=ns tid=ns ...": utime+stime in CLK_TCK ticks (whole thread group, dead
# threads included) and each live thread's on-CPU nanoseconds (/proc/PID/task/TID/schedstat).
cpu_sample() {
    local pid t f tid ns rest
    cat /proc/[0-9]*/stat 2>/dev/null | awk -v root="$1" '
        { pid = $1; s = $0; sub(/^.*\) /, "", s); split(s, f, " ")
          ppid[pid] = f[2]; t[pid] = f[12] + f[13] }
        END { if (!(root in t)) exit; in_tree[root] = 1; changed = 1
              while (changed) { changed = 0
                  for (p in ppid) if (!(p in in_tree) && (ppid[p] in in_tree)) { in_tree[p] = 1; changed = 1 } }
              for (p in in_tree) print p, t[p] }' |
    while read -r pid t; do
        printf '%s %s' "$pid" "$t"
        for f in /proc/"$pid"/task/*/schedstat; do
            tid=${f#/proc/"$pid"/task/}; tid=${tid%/schedstat}
            read -r ns rest < "$f" 2>/dev/null && printf ' %s=%s' "$tid" "$ns"
        done
        echo
    done
}
# CPU seconds between two samples. Per process: the nanosecond sum over its threads when every
# thread of the first sample is still alive (new threads count whole), else the tick difference;
# a process born in between counts whole.
cpu_delta() {
    awk -v hz="$HZ" '
        NR == FNR { n = split($0, a, " "); p = a[1]; t0[p] = a[2]; s0[p] = 0; k0[p] = ""
                    for (i = 3; i <= n; i++) { split(a[i], kv, "="); s0[p] += kv[2]; k0[p] = k0[p] " " kv[1] }
                    next }
        { n = split($0, a, " "); p = a[1]; s1 = 0; delete alive
          for (i = 3; i <= n; i++) { split(a[i], kv, "="); s1 += kv[2]; alive[kv[1]] = 1 }
          if (!(p in t0)) { total += s1 / 1e9; next }
          ok = 1; m = split(k0[p], old, " "); for (i = 1; i <= m; i++) if (!(old[i] in alive)) ok = 0
          total += ok ? (s1 - s0[p]) / 1e9 : (a[2] - t0[p]) / hz }
        END { printf "%.4f", total + 0 }' "$1" "$2"
}

now() { date +%s.%N; }

# CPU per unit of sixgate over Kamailio at one step: cpu_ratio SIXGATE_KEY KAMAILIO_KEY reads
# R[key:proxy_s], R[key:att] and R[key:failpct] of the script's results array R; prints the ratio,
# or "n/a (more than 1% failed)" when either side failed more than 1 %.
cpu_ratio() {
    local g=$1 k=$2
    if awk -v a="${R[$k:failpct]}" -v b="${R[$g:failpct]}" 'BEGIN { exit !(a == "-" || b == "-" || a > 1 || b > 1) }'; then
        echo "n/a (more than 1% failed)"
    else
        awk -v a="${R[$g:proxy_s]}" -v na="${R[$g:att]}" -v b="${R[$k:proxy_s]}" -v nb="${R[$k:att]}" \
            'BEGIN { if (na > 0 && nb > 0 && b > 0) printf "%.2f", (a / na) / (b / nb); else print "-" }'
    fi
}

reap_all() {  # TERM every process in PIDS, KILL what is left after 2 s, reap them all
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    PIDS=()
}

# Memory of PID and its descendants in KiB: the sum of their PSS (shared pages, e.g. Kamailio's
# shared memory, divided among the processes that map them, so the sum counts them once).
tree_pss_kb() {
    local p total=0 kb
    for p in $(cpu_sample "$1" | awk '{ print $1 }'); do
        kb=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

# The global part of a Kamailio config both load scripts write: quiet, forking with
# KAMAILIO_CHILDREN workers per socket, UDP only, no DNS.
kamailio_globals() {
    cat <<EOF
debug=0
log_stderror=yes
fork=yes
children=$KAMAILIO_CHILDREN
disable_tcp=yes
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=off
sip_warning=0
server_header="Server: kamailio"
EOF
}
