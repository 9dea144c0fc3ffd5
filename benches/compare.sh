#!/usr/bin/env bash
# Measures this checkout against the release build of another git revision
# (default: origin's main, else the parent commit), both beside the floor in
# one run of the Workload API benchmark:
#   benches/compare.sh [REV] [-- BENCH ARGS...]
# The older build is cached in target/bench-baseline/<commit>/attestd.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

rev=${1:-HEAD~1}
[[ $# -gt 0 ]] && shift
[[ ${1:-} == "--" ]] && shift
commit=$(git rev-parse --verify "$rev^{commit}")
cache="$repo/target/bench-baseline/$commit"
if [[ ! -x "$cache/attestd" ]]; then
    echo "==> building attestd at $rev ($commit) in release mode"
    tree=$(mktemp -d /tmp/attestd-baseline.XXXXXX)
    trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
    git worktree add --detach --quiet "$tree" "$commit"
    CARGO_TARGET_DIR="$repo/target/bench-baseline/target" cargo build --release --quiet --bin attestd --manifest-path "$tree/Cargo.toml"
    mkdir -p "$cache"
    cp "$repo/target/bench-baseline/target/release/attestd" "$cache/attestd"
    # Now, not at exit: exec below would skip the trap.
    git worktree remove --force "$tree"
    trap - EXIT
fi
exec cargo bench --quiet --bench workload_api -- --baseline "${rev}=$cache/attestd" "$@"
