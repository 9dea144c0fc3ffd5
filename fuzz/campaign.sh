#!/usr/bin/env bash
# Fuzz campaigns over attestd's parsers (fuzz/fuzz_targets; see the
# README's "Fuzzing" section). Needs the nightly toolchain; cargo-fuzz is
# installed once by fuzz/install.sh.
#
#   fuzz/campaign.sh short [SECONDS]      each target SECONDS (default 5) on
#                                         its corpus; fails on any crash,
#                                         leak, timeout or out-of-memory.
#                                         What it finds is not kept.
#   fuzz/campaign.sh long [RUNS] [TARGET...]
#                                         each target (default: all) for RUNS
#                                         executions (default 10,000,000), one
#                                         at a time, under nice -n 19; appends
#                                         one line per target to
#                                         fuzz/results.tsv. New inputs go to
#                                         target/fuzz-corpus/<target>.
#                                         FUZZ_MAX_SECONDS caps each target's
#                                         time (0, the default: no cap).
#                                         FUZZ_SANITIZER=none runs a build
#                                         without AddressSanitizer (2 to 4
#                                         times the executions a second; its
#                                         own cached target directory).
#   fuzz/campaign.sh cmin [TARGET...]     adds target/fuzz-corpus/<target> to
#                                         fuzz/corpus/<target> and minimizes it
#                                         (cargo fuzz cmin).
#
# The ASan build is slow from cold (a nightly build of attestd and its
# dependencies), so its target directory lives outside the checkout with
# the other cached test peers ($ATTESTD_PEER_CACHE/fuzz-target), where a
# fresh clone on the same machine reuses it.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cache=${ATTESTD_PEER_CACHE:-/var/cache/attestd-test-peers}
sanitizer=${FUZZ_SANITIZER:-address}
case $sanitizer in
    address) default_target_dir=$cache/fuzz-target ;;
    *) default_target_dir=$cache/fuzz-target-$sanitizer ;;
esac
target_dir=${ATTESTD_FUZZ_TARGET_DIR:-$default_target_dir}
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzzing needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
PATH="$(dirname "$(fuzz/install.sh)"):$PATH"
export PATH
# Every cargo fuzz build here (build, and cmin's) leaves the oracle
# uninstrumented.
export RUSTC_WRAPPER="$repo/fuzz/uninstrumented-oracle.sh"

all_targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^attestd-fuzz$')
# Where the built targets are: PROFILE is release (optimised, what long
# campaigns run) or debug (what the short mode runs, see below).
profile_dir() { echo "$target_dir/x86_64-unknown-linux-gnu/$1"; }
# As cargo fuzz runs them: the std of a sanitized build is not itself
# instrumented, so ODR checks report false positives.
export ASAN_OPTIONS=detect_odr_violation=0

# The libFuzzer options of a target beyond the common ones: its
# dictionary, and a larger input for whole HTTP/2 connections.
options() {
    case $1 in
        config | entries) echo "-dict=fuzz/dict/config.dict" ;;
        helper_config) echo "-dict=fuzz/dict/helper_config.dict" ;;
        jwt_svid) echo "-dict=fuzz/dict/jwt_svid.dict" ;;
        bundle_document | authzen) echo "-dict=fuzz/dict/json.dict" ;;
        authority_fix) echo "-max_len=65536" ;;
    esac
}

# The cached target directory's layout. cargo names what it builds by a
# hash of its settings and never deletes what a change of settings left
# behind, so a change to how the targets are built raises this number and a
# directory stamped otherwise is cleaned once instead of growing:
#   1  the oracle built uninstrumented (fuzz/uninstrumented-oracle.sh: cargo
#      does not fingerprint a RUSTC_WRAPPER, so an older directory held an
#      instrumented one)
#   2  the unoptimised build with line tables only (with full debug
#      information it was 8.7 GB)
layout=2

# Builds every target.
build() {
    local profile=$1
    local stamp=$target_dir/.layout built_as
    # A directory without a stamp predates it: layout 1.
    built_as=$(cat "$stamp" 2>/dev/null || echo 1)
    if [[ -n $(ls -A "$target_dir" 2>/dev/null) && $built_as != "$layout" ]]; then
        echo "cleaning $target_dir: built by an older fuzz/campaign.sh (layout $built_as, now $layout)"
        if [[ $target_dir == "$default_target_dir" ]]; then
            rm -rf "$target_dir"
        else
            # Not this script's own cache: cargo cleans only a directory it
            # made (with its CACHEDIR.TAG) and refuses any other.
            cargo +nightly clean --quiet --manifest-path fuzz/Cargo.toml --target-dir "$target_dir"
        fi
    fi
    local unoptimised=()
    [[ $profile == release ]] || unoptimised=(--dev)
    cargo +nightly fuzz build "${unoptimised[@]}" --sanitizer "$sanitizer" --target-dir "$target_dir"
    echo "$layout" > "$stamp"
}

# run PROFILE TARGET SCRATCH_CORPUS [libFuzzer options...]: new inputs go
# to the scratch corpus, the kept corpus is only read; crashes are written
# to target/fuzz-artifacts/TARGET/.
run() {
    local bin_dir name=$2 scratch=$3
    bin_dir=$(profile_dir "$1")
    shift 3
    mkdir -p "$scratch" "fuzz/corpus/$name" "target/fuzz-artifacts/$name"
    # shellcheck disable=SC2046 # options() is a list of words
    nice -n 19 "$bin_dir/$name" "$scratch" "fuzz/corpus/$name" $(options "$name") \
        -artifact_prefix="target/fuzz-artifacts/$name/" -timeout=30 -print_final_stats=1 "$@"
}

mode=${1:-short}
shift || true
case $mode in
    short)
        # Unoptimised (cargo fuzz build --dev): attestd changes with nearly
        # every commit, and its optimised ASan build took 4.5 of the test
        # command's minutes where the unoptimised one takes about one.
        # The targets then also check overflow and debug assertions, and
        # still run every input of their corpus in the seconds given (a
        # seventh of the optimised build's executions).
        seconds=${1:-5}
        build debug
        scratch=$(mktemp -d)
        trap 'rm -rf "$scratch"' EXIT
        for name in $all_targets; do
            echo "==> $name: ${seconds}s"
            if ! run debug "$name" "$scratch/$name" -max_total_time="$seconds" > "$scratch/$name.log" 2>&1; then
                tail -n 60 "$scratch/$name.log" >&2
                echo "fuzz target $name failed: see target/fuzz-artifacts/$name/" >&2
                exit 1
            fi
            grep -E '^stat::number_of_executed_units' "$scratch/$name.log" || true
        done
        echo "all fuzz targets ran without a crash"
        ;;
    long)
        runs=${1:-10000000}
        shift || true
        targets=${*:-$all_targets}
        build release
        results=fuzz/results.tsv
        [[ -s $results ]] || printf 'date\tcommit\ttarget\texecutions\tseconds\texec_per_s\tcorpus\toutcome\tsanitizer\n' > "$results"
        commit=$(git rev-parse --short HEAD)
        for name in $targets; do
            log="target/fuzz-$name.log"
            echo "==> $name: $runs executions (log: $log)"
            start=$(date +%s)
            outcome=ok
            run release "$name" "target/fuzz-corpus/$name" -runs="$runs" -max_total_time="${FUZZ_MAX_SECONDS:-0}" \
                > "$log" 2>&1 || outcome=failed
            seconds=$(( $(date +%s) - start ))
            executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
            corpus=$(find "target/fuzz-corpus/$name" "fuzz/corpus/$name" -type f | wc -l)
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$commit" "$name" "${executed:-?}" \
                "$seconds" "$(( ${executed:-0} / (seconds > 0 ? seconds : 1) ))" "$corpus" "$outcome" "$sanitizer" >> "$results"
            tail -n 1 "$results"
        done
        ;;
    cmin)
        targets=${*:-$all_targets}
        for name in $targets; do
            echo "==> $name: minimizing fuzz/corpus/$name with target/fuzz-corpus/$name"
            mkdir -p "fuzz/corpus/$name"
            [[ ! -d target/fuzz-corpus/$name ]] || cp -n target/fuzz-corpus/"$name"/* "fuzz/corpus/$name/" 2>/dev/null || true
            nice -n 19 cargo +nightly fuzz cmin --sanitizer "$sanitizer" --target-dir "$target_dir" "$name" "fuzz/corpus/$name" \
                > "target/fuzz-cmin-$name.log" 2>&1
        done
        du -sh fuzz/corpus
        ;;
    *)
        echo "usage: $0 short [SECONDS] | long [RUNS] [TARGET...] | cmin [TARGET...]" >&2
        exit 2
        ;;
esac
