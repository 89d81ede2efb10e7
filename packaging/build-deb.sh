#!/bin/sh
# Builds the Debian package (target/debian/sixgate_<version>-1_<arch>.deb) with cargo-deb from
# the [package.metadata.deb] section of Cargo.toml, then checks it (packaging/check-deb.sh:
# lintian, contents, modes, conffile, the installed config, the systemd unit).
# Installs what it needs when missing: cargo-deb (cargo install), lintian (apt-get).
set -eu
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    cargo install cargo-deb --locked --version "^3"
fi
if ! command -v lintian >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q lintian >/dev/null
fi

cargo deb --locked --strip
deb=$(ls -t target/debian/sixgate_*.deb | head -n 1)
packaging/check-deb.sh "$deb"
