#!/bin/sh
# Instructions per parse for each parser and message (see benches/message_icount.rs).
# usage: benches/message_icount.sh [iterations]     (needs valgrind)
set -eu
cd "$(dirname "$0")/.."
N=${1:-2000}
bin=$(cargo bench --bench message_icount --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*message_icount[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build message_icount" >&2; exit 1; }
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" "$3" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
printf '%-12s %-20s %s\n' message parser instructions/parse
for msg in invite_sdp register ok_200; do
    for p in sixgate sixgate_split_only rsip_0.4 rsipstack_0.7; do
        base=$(count "$p" "$msg" 0)
        full=$(count "$p" "$msg" "$N")
        printf '%-12s %-20s %d\n' "$msg" "$p" $(( (full - base) / N ))
    done
done
