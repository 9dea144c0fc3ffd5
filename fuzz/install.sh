#!/usr/bin/env bash
# Installs cargo-fuzz (CARGO_FUZZ_VERSION, default 0.13.2) from crates.io,
# once, into a cache outside the checkout ($ATTESTD_PEER_CACHE, default
# /var/cache/attestd-test-peers), so a fresh clone on the same machine does
# not build it again. Prints the path of the cargo-fuzz binary.
#   fuzz/install.sh   -> /var/cache/attestd-test-peers/cargo-fuzz-0.13.2/bin/cargo-fuzz
# Used by fuzz/campaign.sh (and so by tests/run-all.sh).
set -euo pipefail
version=${CARGO_FUZZ_VERSION:-0.13.2}
cache=${ATTESTD_PEER_CACHE:-/var/cache/attestd-test-peers}
mkdir -p -m 0755 "$cache"
root="$cache/cargo-fuzz-$version"

if [[ ! -x "$root/bin/cargo-fuzz" ]]; then
    echo "==> installing cargo-fuzz $version into $root (once; cached there)" >&2
    # Into a scratch directory first, so an interrupted build never leaves a
    # half-written binary that the check above would take as done.
    tmp="$root.partial"
    rm -rf "$tmp"
    cargo install --quiet --locked --version "$version" --root "$tmp" cargo-fuzz >&2
    rm -rf "$root"
    mv "$tmp" "$root"
fi
echo "$root/bin/cargo-fuzz"
