#!/bin/sh
# Runs sixgate's whole test suite. Installs the third-party peers the tests talk to first (Debian
# packages, only those missing; needs root or sudo for that step), so it works on a fresh Debian
# machine and is a no-op the second time.
#
#   ./scripts/test.sh              # everything
#   ./scripts/test.sh torture      # extra arguments go to `cargo test` (a filter, --release, ...)
set -eu
cd "$(dirname "$0")/.."

# command the tests run   Debian package that provides it
PEERS="
sipp                    sip-tester
baresip                 baresip-core
turnutils_stunclient    coturn
dnsmasq                 dnsmasq-base
nft                     nftables
ip                      iproute2
"

missing=$(echo "$PEERS" | while read -r cmd pkg; do
    # sbin tools (dnsmasq, nft) may be installed but off a non-root PATH: look there too.
    if [ -n "$cmd" ] && ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then echo "$pkg"; fi
done | sort -u | tr '\n' ' ')
# The metrics test parses the exposition with the Prometheus project's own parser (Debian's
# python3 module, not a command).
if [ ! -d /usr/lib/python3/dist-packages/prometheus_client ]; then missing="$missing python3-prometheus-client "; fi

if [ -n "${missing% }" ]; then
    echo "test.sh: installing test peers: $missing"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "test.sh: need root (or sudo) to apt-get install $missing" >&2; exit 1; }
        SUDO="sudo"
    fi
    # coturn ships a TURN server; the tests only use its STUN client, so keep the daemon from being
    # started by the install (the standard policy-rc.d mechanism) and from starting at boot.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
    if echo "$missing" | grep -q coturn && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now coturn >/dev/null 2>&1 || true
    fi
fi

command -v cargo >/dev/null 2>&1 || { echo "test.sh: cargo not found: install a Rust toolchain (https://rustup.rs)" >&2; exit 1; }
cargo test --workspace --locked "$@"
