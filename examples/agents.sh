#!/usr/bin/env bash
# attestd's agent model end to end (the README's worked example): a planning
# agent (uid 1000) starts a task, delegates a narrower sub-task to a writing
# agent (root), both call the tool gateway example (uid 65534), which asks
# attestd before every action; the planner ends its task; then the trail is
# traced back from the task. Needs root (three uids) and setpriv.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
if [[ $(id -u) -ne 0 ]] || ! command -v setpriv >/dev/null; then
    echo "run as root (the example runs agents as uids 1000, 0 and 65534), with setpriv" >&2
    exit 1
fi

echo "==> building attestd and the tool gateway example"
cargo build --quiet --bin attestd --example tool_gateway
attestd="$repo/target/debug/attestd"
gateway_bin="$repo/target/debug/examples/tool_gateway"

dir=$(mktemp -d /tmp/attestd-agents.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

sed "s|@DIR@|$dir|g" examples/agents/attestd.toml > "$dir/attestd.toml"
cp -r examples/agents/policies "$dir/policies"
socket="unix://$dir/run/api.sock"
as() { local uid=$1; shift; setpriv --reuid "$uid" --regid "$uid" --clear-groups "$@"; }

echo "==> starting attestd"
RUST_LOG=warn "$attestd" run -c "$dir/attestd.toml" &
pids+=($!)
for _ in $(seq 100); do [[ -S "$dir/run/api.sock" ]] && break; sleep 0.1; done

echo "==> starting the tool gateway as uid 65534"
install -d -o 65534 -g 65534 "$dir/notes"
# setpriv execs the gateway, so $! is the gateway itself (for the cleanup).
setpriv --reuid 65534 --regid 65534 --clear-groups \
    "$gateway_bin" --listen 127.0.0.1:0 --socket "$socket" --data-dir "$dir/notes" > "$dir/gateway.out" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$dir/gateway.out" 2>/dev/null && break; sleep 0.1; done
gateway=$(sed -n 's/^tool gateway listening on //p' "$dir/gateway.out")

call() { # TOKEN TOOL NOTE TEXT
    local body
    body=$(jq -cn --arg r "note:$3" --arg t "$4" '{resource: $r, args: {text: $t}}')
    printf '%s %s on note:%s -> ' "$5" "$2" "$3"
    curl -s -w ' (HTTP %{http_code})\n' -H "Authorization: Bearer $1" -d "$body" "$gateway/tools/$2"
}

echo
echo "==> the planner (uid 1000) starts a task for itself, the writer and the gateway"
planner_task=$(as 1000 "$attestd" task start --socket "$socket" --json \
    --purpose "draft the 2.0 release plan" --tool notes.write --tool notes.read \
    --audience spiffe://example.org/agent/writer --audience spiffe://example.org/gateway/notes)
planner_id=$(jq -r .task_id <<<"$planner_task")
planner_token=$(jq -r .token <<<"$planner_task")
echo "task $planner_id"

echo
echo "==> the writer (root) starts a sub-task from the planner's token: notes.write only"
writer_task=$("$attestd" task start --socket "$socket" --json --parent-token "$planner_token" \
    --purpose "write the plan's first draft" --tool notes.write \
    --audience spiffe://example.org/gateway/notes)
writer_id=$(jq -r .task_id <<<"$writer_task")
writer_token=$(jq -r .token <<<"$writer_task")
echo "sub-task $writer_id"

echo
echo "==> tool calls through the gateway"
call "$planner_token" notes.write plan "2.0 ships in March" planner
call "$writer_token" notes.write plan "draft: scope, dates, owners" writer
call "$writer_token" notes.read plan "" writer
call "$writer_token" notes.write changelog "2.0: everything" writer
call "$planner_token" notes.read plan "" planner
call "" notes.write plan "no token" anonymous

echo
echo "==> the planner ends its task: the sub-task ends with it"
as 1000 "$attestd" task end --socket "$socket" "$planner_id"
call "$writer_token" notes.write plan "late edit" writer

echo
echo "==> attestd audit trace --task $planner_id"
"$attestd" audit trace --task "$planner_id" "$dir/data/audit.jsonl"

echo
echo "==> attestd audit verify"
"$attestd" audit verify "$dir/data/audit.jsonl"
