#!/usr/bin/env bash
# The policy figures of a real daemon (release build): how long `attestd
# run` takes to be ready with a generated policy and its peak memory then
# (VmHWM), and how long after one file of the policy changes the new policy
# is in effect (the file watcher's settling included), and peak memory again.
#
#   benches/registry_daemon.sh [ENTRIES] [FILES] [--exe]     # default 100000 100
#
# Prints the time to ready and VmHWM, then for three edits the time from
# the write to the log line "new policy in effect" (polled every 5 ms),
# with the line itself (elapsed_ms: the reload's own work).
#
# The policy comes from the registry benchmark's generator
# (`cargo bench --bench registry -- --write-policy`); a sed rewrite of the
# first file's descriptions changes its entries but none of their
# identities. Run as root (or a user that may create the temporary socket).
set -euo pipefail

entries=${1:-100000}
files=${2:-100}
exe=${3:-}
cd "$(dirname "$0")/.."
cargo build --quiet --release --bin attestd
bench=$(cargo bench --quiet --bench registry --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\/deps\/registry-[^"]*\)".*/\1/p' | tail -1)
work=$(mktemp -d)
pid=
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
config=$("$bench" --write-policy "$work" --entries "$entries" --files "$files" $exe)

now() { date +%s.%N; }
# Waits until the log holds $1 at least $2 times; prints the seconds since $3.
wait_for() {
    while [ "$(grep -c "$1" "$work/log" || true)" -lt "$2" ]; do
        kill -0 "$pid" 2>/dev/null || { cat "$work/log"; exit 1; }
        sleep 0.005
    done
    echo "$(now) - $3" | bc
}
hwm() { awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$pid/status"; }

started=$(now)
target/release/attestd run -c "$config" >"$work/log" 2>&1 &
pid=$!
ready=$(wait_for "attestd ready" 1 "$started")
echo "ready with $entries entries in $files files: ${ready} s, VmHWM $(hwm)"

first="$work/entries.d/entries-0000.toml"
for round in 1 2 3; do
    # A policy is edited long after it was written: files changed within
    # the last 2 s are read again on each reload (see entry_files.rs).
    sleep 2.5
    changed=$(now)
    sed -i "s/(revision [0-9]*)/(revision $round)/" "$first"
    took=$(wait_for "new policy in effect" "$round" "$changed")
    line=$(grep "new policy in effect" "$work/log" | tail -1)
    echo "reload $round: in effect ${took} s after the write; ${line##*new policy in effect }"
done
echo "after reloads: VmHWM $(hwm)"
