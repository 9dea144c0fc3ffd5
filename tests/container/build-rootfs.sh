#!/usr/bin/env bash
# Builds the root file system of the end-to-end tests' container image
# (tests/e2e/container.rs imports it with `podman import`; no registry).
#
#   build-rootfs.sh CACHE_DIR
#
# Writes, under CACHE_DIR:
#   client           go-spiffe client of tests/interop/go, statically linked
#                    (CGO_ENABLED=0), so it runs in an image with nothing else
#   trusted/agent    the same program, standing for a trusted host binary
#                    that an entry names by unix:path
#   rootfs.tar       /client, and at CACHE_DIR/trusted/agent (the very path
#                    of the trusted host binary) an attacker's program: the
#                    client with a marker appended, so its bytes differ.
#                    Reproducible (fixed owners, times and order), so the
#                    test re-imports only when the content changed.
set -euo pipefail

cache=$(realpath -m "$1")
repo=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$cache/trusted"

(cd "$repo/tests/interop/go" && CGO_ENABLED=0 go build -trimpath -o "$cache/client.new" .)
# Replace, never rewrite in place: a running copy would make it ETXTBSY.
mv -f "$cache/client.new" "$cache/client"
cp "$cache/client" "$cache/trusted/agent.new"
mv -f "$cache/trusted/agent.new" "$cache/trusted/agent"
chmod 0755 "$cache" "$cache/trusted"

rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
install -D -m 0755 "$cache/client" "$rootfs/client"
install -D -m 0755 "$cache/client" "$rootfs$cache/trusted/agent"
printf '\nnot the trusted agent\n' >> "$rootfs$cache/trusted/agent"
# -p: when CACHE_DIR is itself under /tmp, the trusted path made it already.
mkdir -p "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -C "$rootfs" -cf "$cache/rootfs.tar.new" .
mv -f "$cache/rootfs.tar.new" "$cache/rootfs.tar"
