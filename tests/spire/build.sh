#!/usr/bin/env bash
# Builds spire-server and spire-agent (SPIRE_VERSION, default 1.13.3) from
# the Go module proxy, once, into a cache outside the checkout
# ($ATTESTD_PEER_CACHE, default /var/cache/attestd-test-peers: not under a
# home directory, since the tests run spire-agent as other uids), so a fresh
# clone on the same machine does not build them again (about 20 minutes on
# two cores); target/spire-<version> links to it. Prints that directory.
#   tests/spire/build.sh            -> target/spire-1.13.3
# Used by tests/run-all.sh (the fleet-mode end-to-end tests run a real
# spire-server, and the mixed-fleet test a real spire-agent beside attestd)
# and by benches/spire.sh.
#
# Built inside the downloaded module rather than with `go install
# ...@v<version>`, which also asks the proxy for the module's version list
# (for deprecation notices): some proxies refuse that (403). CGO is on:
# the sqlite3 datastore needs it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
version=${SPIRE_VERSION:-1.13.3}
cache=${ATTESTD_PEER_CACHE:-/var/cache/attestd-test-peers}
mkdir -p -m 0755 "$cache"
bin="$cache/spire-$version"

if [[ ! -x "$bin/spire-agent" || ! -x "$bin/spire-server" ]]; then
    echo "==> building SPIRE $version into $bin (once; cached there)" >&2
    go mod download "github.com/spiffe/spire@v$version"
    src="$(go env GOMODCACHE)/github.com/spiffe/spire@v$version"
    # Into a scratch directory first, so an interrupted build never leaves
    # a half-written binary that the check above would take as done.
    tmp="$cache/spire-$version.partial"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    (cd "$src" && GOBIN="$tmp" CGO_ENABLED=1 GOFLAGS=-buildvcs=false \
        go install ./cmd/spire-server ./cmd/spire-agent) >&2
    mkdir -p "$bin"
    mv "$tmp/spire-server" "$tmp/spire-agent" "$bin/"
    rm -rf "$tmp"
fi
mkdir -p "$repo/target"
link="$repo/target/spire-$version"
# An older layout built into target/ itself: replace it with the link.
[[ -L "$link" || ! -e "$link" ]] || rm -rf "$link"
ln -sfn "$bin" "$link"
echo "$link"
