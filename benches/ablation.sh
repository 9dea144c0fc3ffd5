#!/usr/bin/env bash
# Where attestd's cost beyond the floor goes, by ablation: builds this
# checkout's last commit with benches/ablation.patch, a measurement-only
# change by which a daemon skips parts of the request path, and runs the
# Workload API harness with it as baselines beside this checkout's attestd:
#   benches/ablation.sh [BENCH ARGS...]     e.g. benches/ablation.sh --mode new-conn --rounds 7
#   ABLATIONS="noattest nowrap" benches/ablation.sh --mode same-conn
#   benches/ablation.sh --check             only check that the patch still applies
# Parts a baseline can skip (a name joining parts with + skips each):
#   noattest  the first caller's facts are reused for every call: no /proc reads
#   noaudit   no audit record is written
#   nowrap    the connection's HPACK adapter and opening-frame hold are bypassed
# `ctl` is the patched build skipping nothing: it shows the patch itself
# costs nothing. The patched daemon is built in the target directory of
# benches/compare.sh's baselines (their dependencies are the same), copied
# to target/ablation/attestd, and never installed or shipped. See
# benches/README.md, "Ablation".
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
patch=benches/ablation.patch

if [[ ${1:-} == --check ]]; then
    git apply --check "$patch"
    echo "benches/ablation.patch applies to this checkout"
    exit 0
fi

ablations=${ABLATIONS:-"noattest noaudit noattest+noaudit nowrap"}
tree=target/ablation/tree
rm -rf "$tree"
mkdir -p "$tree"
git archive HEAD | tar -x -C "$tree"
# From the repository's root: run inside the tree, which lies in this
# repository, git apply would skip every path outside the tree unnoticed.
if ! git apply --directory="$tree" "$patch"; then
    echo "benches/ablation.patch no longer applies to HEAD: update it to the request path as it is now" >&2
    exit 1
fi
echo "==> building the ablation daemon (release)" >&2
CARGO_TARGET_DIR="$repo/target/bench-baseline/target" cargo build --release --quiet --bin attestd \
    --manifest-path "$tree/Cargo.toml"
bin=$repo/target/ablation/attestd
cp "$repo/target/bench-baseline/target/release/attestd" "$bin"

baselines=(--baseline "ctl=$bin")
for name in $ablations; do
    baselines+=(--baseline "$name=$bin")
done
cargo bench --bench workload_api -- "$@" "${baselines[@]}"
