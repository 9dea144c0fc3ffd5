#!/usr/bin/env bash
# Installs cargo-deb (CARGO_DEB_VERSION, default 3.8.0) from crates.io, once,
# into a cache outside the checkout ($ATTESTD_PEER_CACHE, default
# /var/cache/attestd-test-peers), so CI does not compile it on every run
# (about 5 minutes on two cores). Prints the binary's path.
#   tests/packaging/cargo-deb.sh   -> /var/cache/attestd-test-peers/cargo-deb-3.8.0/bin/cargo-deb
# Used by tests/run-all.sh; packaging/build-deb.sh finds it through $CARGO_DEB.
set -euo pipefail
version=${CARGO_DEB_VERSION:-3.8.0}
cache=${ATTESTD_PEER_CACHE:-/var/cache/attestd-test-peers}
mkdir -p -m 0755 "$cache"
root="$cache/cargo-deb-$version"
if [[ ! -x "$root/bin/cargo-deb" ]]; then
    echo "==> installing cargo-deb $version into $root (once; cached there)" >&2
    # Into a scratch root first: an interrupted install never looks done.
    # Built beside it, not under /tmp, which others may clean meanwhile.
    rm -rf "$root.partial" "$root.build"
    nice -n 10 cargo install --quiet --locked --version "$version" --root "$root.partial" \
        --target-dir "$root.build" cargo-deb >&2
    rm -rf "$root" "$root.build"
    mv "$root.partial" "$root"
fi
echo "$root/bin/cargo-deb"
