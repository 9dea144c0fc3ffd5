#!/usr/bin/env bash
# RUSTC_WRAPPER for fuzz/campaign.sh's builds: compiles loona-hpack, the
# independent HPACK decoder authority_fix checks the re-encoder against,
# without coverage instrumentation. It is the oracle, not what is being
# fuzzed: instrumented, its Huffman decoder (a hash table built for every
# string) made half of each execution comparison hooks, and its branches
# rewarded inputs that only exercised the oracle. cargo-fuzz puts its
# flags in RUSTFLAGS, so the override must come after them, here.
# (attestd's own HPACK encoding goes through the same crate; attestd's
# code around it stays instrumented.)
for arg; do
    if [[ $arg == loona_hpack ]]; then
        exec "$@" -Cllvm-args=-sanitizer-coverage-level=0
    fi
done
exec "$@"
