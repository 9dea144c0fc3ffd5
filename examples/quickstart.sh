#!/usr/bin/env bash
# attestd quickstart: start attestd on a temporary directory with a policy
# that gives the current user an identity, fetch that identity with the CLI
# client, show that another uid is refused, show the audit trail, stop.
#
# The attestd it runs: $ATTESTD if set, else an installed `attestd` on the
# PATH (the Debian package's), else this checkout's, built on the spot.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if [[ -n ${ATTESTD:-} ]]; then
    attestd=$ATTESTD
elif attestd=$(command -v attestd); then
    echo "==> using the installed $attestd ($("$attestd" --version))"
else
    echo "==> building attestd (no attestd on the PATH)"
    cargo build --quiet --bin attestd
    attestd="$repo/target/debug/attestd"
fi

dir=$(mktemp -d /tmp/attestd-quickstart.XXXXXX)
# Other uids must be able to reach the socket inside.
chmod 755 "$dir"
pid=""
cleanup() {
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        wait "$pid" || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

sed -e "s|@DIR@|$dir|g" -e "s|@UID@|$(id -u)|g" examples/quickstart.toml > "$dir/attestd.toml"
socket="unix://$dir/run/api.sock"

echo "==> starting attestd (trust domain example.org, socket $dir/run/api.sock)"
RUST_LOG=warn "$attestd" run -c "$dir/attestd.toml" &
pid=$!
for _ in $(seq 100); do
    [[ -S "$dir/run/api.sock" ]] && break
    kill -0 "$pid" 2>/dev/null || { echo "attestd failed to start" >&2; exit 1; }
    sleep 0.1
done

echo
echo "==> uid $(id -u) asks for its identity"
"$attestd" api fetch x509 --socket "$socket" --write "$dir/svid"
if command -v openssl >/dev/null; then
    echo
    echo "==> openssl verifies the SVID against the trust bundle"
    openssl verify -CAfile "$dir/svid/bundle.0.pem" "$dir/svid/svid.0.pem"
fi

echo
if [[ $(id -u) -eq 0 ]] && command -v setpriv >/dev/null; then
    echo "==> uid 65534 (nobody) asks too, and has no identity"
    if setpriv --reuid 65534 --regid 65534 --clear-groups "$attestd" api fetch x509 --socket "$socket"; then
        echo "unexpected: uid 65534 received an identity" >&2
        exit 1
    fi
else
    echo "==> (run as root to also see a process of another uid being refused)"
fi

echo
echo "==> audit trail ($dir/data/audit.jsonl)"
cat "$dir/data/audit.jsonl"

echo
echo "==> stopping attestd"
kill -TERM "$pid"
wait "$pid"
pid=""
echo "done"
