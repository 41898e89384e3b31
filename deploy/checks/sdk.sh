#!/usr/bin/env bash
# Runs the official OpenAI and Anthropic Python SDKs against a real edge in
# front of the mock provider (both from this repo's release or debug build).
# Installs the SDKs into a throwaway virtualenv from PyPI.
set -euo pipefail
cd "$(dirname "$0")/../.."
profile="${PROFILE:-debug}"
if [ "$profile" = release ]; then cargo build -q --release -p switchyard-dataplane -p switchyard-loadtest
else cargo build -q -p switchyard-dataplane -p switchyard-loadtest; fi
bin="target/$profile"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/switchyard-loadtest" mock --listen 127.0.0.1:0 > "$work/mock.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "mock listening on" "$work/mock.out" && break; sleep 0.05; done
mock_url="$(sed -n 's/^mock listening on //p' "$work/mock.out" | head -1)"
MOCK_URL="$mock_url" "$bin/switchyard-edge" --config deploy/examples/edge-mock.yaml \
  --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --call-log "$work/calls.jsonl" \
  --upgrade-sock "$work/upgrade.sock" > "$work/edge.out" 2>&1 &
pids+=($!)
for _ in $(seq 200); do grep -q "admin listening on" "$work/edge.out" && break; sleep 0.05; done
edge_url="$(sed -n 's/^edge listening on //p' "$work/edge.out" | head -1)"
admin_url="$(sed -n 's/^admin listening on //p' "$work/edge.out" | head -1)"
for _ in $(seq 200); do curl -sf "$admin_url/readyz" >/dev/null && break; sleep 0.05; done

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q openai anthropic
EDGE_URL="$edge_url" "$work/venv/bin/python" deploy/checks/sdk.py
echo "call log lines: $(wc -l < "$work/calls.jsonl")"
curl -s "$admin_url/metrics" | grep -E '^switchyard_(tokens_total|cost_usd_total)' | head -6
