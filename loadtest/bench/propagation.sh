#!/usr/bin/env bash
# Config propagation benchmark: a control plane (embedded store) and N edges
# from plain release binaries; `switchyard-loadtest propagation` applies a
# harmless change APPLIES times and measures apply-returned → every edge
# serving the new version (polling each edge's /admin/config every 1 ms).
#
#   loadtest/bench/propagation.sh [EDGES=3] [APPLIES=200]
set -euo pipefail
cd "$(dirname "$0")/../.."
EDGES=${1:-3}
APPLIES=${2:-200}
BIN=${BIN_DIR:-target/release}
[ -n "${NO_BUILD:-}" ] || cargo build -q --release -p switchyard-dataplane -p switchyard-controlplane -p switchyard-loadtest
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
wait_line() { for _ in $(seq 400); do sed -n "s/^$2//p" "$1" | head -1 | grep . && return 0; sleep 0.05; done; echo "timeout waiting for '$2' in $1" >&2; cat "$1" >&2; return 1; }

"$BIN/switchyard-control" --listen 127.0.0.1:0 --data-dir "$work/cp" \
  --admin-token bench-admin --edge-token bench-edge > "$work/cp.out" 2>&1 &
pids+=($!)
cp_addr=$(wait_line "$work/cp.out" "control plane listening on ")
export SWITCHYARD_SERVER="http://$cp_addr" SWITCHYARD_ADMIN_TOKEN=bench-admin
MOCK_URL=http://127.0.0.1:9 "$BIN/switchyard-ctl" apply -f deploy/examples/edge-mock.yaml -m "propagation bench" > /dev/null
admins=()
for i in $(seq "$EDGES"); do
  SWITCHYARD_EDGE_TOKEN=bench-edge "$BIN/switchyard-edge" --control-plane "http://$cp_addr" \
    --region r$i --node-id "bench-edge-$i" --snapshot-dir "$work/edge$i" \
    --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --call-log "$work/edge$i.calls" \
    --upgrade-sock "$work/edge$i.sock" --threads 1 > "$work/edge$i.out" 2>&1 &
  pids+=($!)
done
for i in $(seq "$EDGES"); do
  a=$(wait_line "$work/edge$i.out" "admin listening on ")
  for _ in $(seq 200); do curl -sf "$a/readyz" > /dev/null && break; sleep 0.05; done
  admins+=(--edge-admin "$a")
done
echo "control plane http://$cp_addr, $EDGES edges, $APPLIES applies; machine: $(nproc) cores, $(uname -m)"
"${LOADTEST_BIN:-$BIN/switchyard-loadtest}" propagation --applies "$APPLIES" "${admins[@]}"
