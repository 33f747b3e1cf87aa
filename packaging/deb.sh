#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (`cargo install cargo-deb`): the release binary, its
# manual pages and shell completions generated from the command line's definition, the systemd
# unit, the example configs and the docs. Prints the package's path.
#
#   packaging/deb.sh            # then: dpkg -i target/debian/natgate_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "needs cargo-deb: cargo install cargo-deb" >&2; exit 1; }

rm -rf target/debian
cargo build --release -q -p natgate --bin natgate
GEN=target/generated
rm -rf "$GEN"
mkdir -p "$GEN/man" "$GEN/completions"
target/release/natgate generate man "$GEN/man"
gzip -9n "$GEN"/man/*.8
target/release/natgate generate completions bash >"$GEN/completions/natgate"
target/release/natgate generate completions zsh >"$GEN/completions/_natgate"
target/release/natgate generate completions fish >"$GEN/completions/natgate.fish"
cargo deb -p natgate --no-build --strip -q >/dev/null
ls target/debian/natgate_*.deb
