#!/usr/bin/env bash
# Builds attestd's Debian package with cargo-deb, in one command:
#
#   packaging/build-deb.sh                 -> target/debian/attestd_<version>-1_<arch>.deb
#   apt install ./target/debian/attestd_*.deb
#
# Options:
#   --profile P        cargo profile to build and package (default release;
#                      the end-to-end test packages its dev build)
#   --no-build         package the binary already built for that profile
#   --deb-version V    the package's version (default: Cargo.toml's, -1)
#   --output DIR       where the .deb goes (default target/debian)
#   --fast             compress less (quicker; the end-to-end test's builds)
#
# cargo-deb comes from $CARGO_DEB, else PATH (tests/packaging/cargo-deb.sh
# installs it; or `cargo install cargo-deb`).
#
# What it generates first, into target/packaging/ (never edited by hand):
#   systemd/attestd.service  systemd/attestd.service with the binary at
#                            /usr/bin/attestd: the unit in the repository
#                            is the manual install's, which puts a locally
#                            built program in /usr/local/bin (FHS), where a
#                            package may not install (Debian policy)
#   man/*.1.gz               the man pages, and
#   completions/             bash, zsh and fish completions, all three from
#                            the CLI's definition (`attestd generate`)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

profile=release
build=yes
deb_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --profile) profile=$2; shift 2 ;;
        --no-build) build=no; shift ;;
        --deb-version) deb_args+=(--deb-version "$2"); shift 2 ;;
        --output) deb_args+=(--output "$2"); shift 2 ;;
        --fast) deb_args+=(--fast); shift ;;
        *) echo "build-deb.sh: unknown option $1 (see the header)" >&2; exit 2 ;;
    esac
done

cargo_deb=${CARGO_DEB:-$(command -v cargo-deb || true)}
if [[ -z "$cargo_deb" ]]; then
    echo "build-deb.sh: cargo-deb not found: run tests/packaging/cargo-deb.sh and set CARGO_DEB, or cargo install cargo-deb" >&2
    exit 1
fi

# cargo's output directory for the profile ("dev" builds into debug/).
case "$profile" in
    dev | test) profile_dir=debug ;;
    *) profile_dir=$profile ;;
esac
target=${CARGO_TARGET_DIR:-$repo/target}
bin="$target/$profile_dir/attestd"
if [[ $build = yes ]]; then
    cargo build --locked --profile "$profile" --bin attestd
fi
[[ -x "$bin" ]] || { echo "build-deb.sh: no $bin (build it, or drop --no-build)" >&2; exit 1; }

out="$target/packaging"
rm -rf "$out"
mkdir -p "$out/systemd" "$out/man" "$out/completions"
sed 's|/usr/local/bin/attestd|/usr/bin/attestd|g' systemd/attestd.service > "$out/systemd/attestd.service"
if grep -q /usr/local "$out/systemd/attestd.service"; then
    echo "build-deb.sh: the packaged unit still names /usr/local" >&2
    exit 1
fi
"$bin" generate man "$out/man" >/dev/null
gzip -9n "$out"/man/*.1
"$bin" generate completions bash > "$out/completions/attestd.bash"
"$bin" generate completions zsh > "$out/completions/_attestd"
"$bin" generate completions fish > "$out/completions/attestd.fish"

"$cargo_deb" --no-build --profile "$profile" "${deb_args[@]}"
