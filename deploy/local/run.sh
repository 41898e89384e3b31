#!/usr/bin/env bash
# Switchyard on one machine, from plain binaries: a control plane, two regions
# (us, eu) each with an edge and two mock providers, the example topology
# (deploy/local/topology.yaml) applied with switchyard-ctl, then the `smoke`
# load-test scenario (loadtest/scenarios/smoke.yaml: steady mixed traffic
# through edge-us with region us's OpenAI provider killed for 4 s, so the
# edge fails over to region eu). Prints the report and where the metrics and
# logs are, and stops everything on exit or Ctrl-C.
#
#   deploy/local/run.sh [--keep] [--scenario NAME] [-- extra `switchyard-loadtest run` args]
#   deploy/local/run.sh --stop [RUN_DIR]     stop a topology left running by --keep
#
#   --keep           leave everything running after the scenario (prints how to
#                    use it and how to stop it)
#   --scenario NAME  another scenario from loadtest/scenarios/ (default: smoke)
#   --no-scenario    start, apply, check, and skip the load test (use with --keep)
#
# Environment:
#   ETCD_ENDPOINTS   use etcd (e.g. http://127.0.0.1:2379) instead of the
#                    control plane's embedded store; ETCD_PREFIX (default
#                    /switchyard-local/<run id>) keeps runs apart
#   BASE_PORT        fixed ports BASE_PORT..BASE_PORT+12 instead of free ones
#   GRACE_PERIOD     edge drain time on stop (default 5s)
#   EDGE_THREADS     worker threads per edge (default 1)
#   NO_BUILD=1       never run cargo; BIN_DIR: where the binaries are
#                    (default target/release)
#   SWITCHYARD_LOG   log level of the edges and control plane (default info)
#
# Everything listens on 127.0.0.1. Run directory: deploy/local/run/<id>/
# (gitignored; deploy/local/run/latest points at the newest).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

usage() {
  sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'
}

KEEP=0
SCENARIO=smoke
STOP_DIR=
STOP=0
LT_EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1 ;;
    --scenario)
      SCENARIO=${2:?--scenario needs a name}
      shift
      ;;
    --no-scenario) SCENARIO= ;;
    --stop)
      STOP=1
      if [ $# -gt 1 ] && [ "${2#-}" = "$2" ]; then
        STOP_DIR=$2
        shift
      fi
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      LT_EXTRA=("$@")
      break
      ;;
    *)
      echo "unknown argument: $1" >&2
      usage >&2
      exit 2
      ;;
  esac
  shift
done

RUNS=$ROOT/deploy/local/run

# Stops the processes listed in DIR/pids (NAME PID per line): edges first
# (SIGTERM: they drain), then the rest; SIGKILL whatever is left after a
# bounded wait. Only PIDs whose command line is still a Switchyard binary
# are signalled (a stale pid file never hits an unrelated process).
stop_dir() {
  local dir=$1 grace=${2:-10}
  local pidfile=$dir/pids
  [ -f "$pidfile" ] || return 0
  local name pid edges=() others=()
  while read -r name pid; do
    [ -n "${pid:-}" ] || continue
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'switchyard-'; then
      case "$name" in
        edge-*) edges+=("$pid") ;;
        *) others+=("$pid") ;;
      esac
    fi
  done <"$pidfile"
  stop_pids "$grace" "${edges[@]}"
  stop_pids 10 "${others[@]}"
  rm -f "$pidfile"
}

# running PID: the process exists and is not a zombie (an exited child of a
# shell that is gone waits for init to reap it).
running() {
  kill -0 "$1" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# stop_pids SECONDS PID...: SIGTERM, wait up to SECONDS, then SIGKILL.
stop_pids() {
  local secs=$1
  shift
  [ $# -gt 0 ] || return 0
  local p i left
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for ((i = 0; i < secs * 10; i++)); do
    left=0
    for p in "$@"; do
      if running "$p"; then left=1; fi
    done
    [ "$left" -eq 1 ] || break
    sleep 0.1
  done
  for p in "$@"; do
    if running "$p"; then
      echo "warning: pid $p did not stop within ${secs}s; killing it" >&2
      kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
}

if [ "$STOP" -eq 1 ]; then
  dir=${STOP_DIR:-$RUNS/latest}
  if [ ! -f "$dir/pids" ]; then
    echo "nothing to stop in $dir (no pids file)"
    exit 0
  fi
  echo "stopping the topology in $dir"
  stop_dir "$dir" 15
  echo "stopped"
  exit 0
fi

# --- tools -------------------------------------------------------------------

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v setsid >/dev/null 2>&1 || need+=(util-linux)
if [ "${NO_BUILD:-}" != 1 ]; then
  command -v cmake >/dev/null 2>&1 || need+=(cmake)
  command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

BIN_DIR=${BIN_DIR:-$ROOT/target/release}
if [ "${NO_BUILD:-}" != 1 ]; then
  echo "building release binaries (cargo build --release --workspace; a no-op when up to date)"
  cargo build --release --workspace
fi
for b in switchyard-edge switchyard-control switchyard-ctl switchyard-loadtest; do
  if [ ! -x "$BIN_DIR/$b" ]; then
    echo "missing $BIN_DIR/$b (build with: cargo build --release --workspace)" >&2
    exit 2
  fi
done
EDGE_BIN=$BIN_DIR/switchyard-edge
CONTROL_BIN=$BIN_DIR/switchyard-control
CTL_BIN=$BIN_DIR/switchyard-ctl
LT_BIN=$BIN_DIR/switchyard-loadtest
if [ -n "$SCENARIO" ] && [ ! -f "$ROOT/loadtest/scenarios/$SCENARIO.yaml" ]; then
  echo "no scenario loadtest/scenarios/$SCENARIO.yaml" >&2
  exit 2
fi

# --- run directory, tokens, keys ------------------------------------------

RUN_ID=$(date +%Y%m%d-%H%M%S)-$$
RUN=$RUNS/$RUN_ID
mkdir -p "$RUN"
# Keep the 10 newest run directories (never one still running: it has pids).
while IFS= read -r old; do
  [ -s "$old/pids" ] || rm -rf -- "$old"
done < <(find "$RUNS" -mindepth 1 -maxdepth 1 -type d -name '20*' | sort -r | tail -n +11)
ln -sfn "$RUN_ID" "$RUNS/latest"
: >"$RUN/pids"

rand_hex() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }
ADMIN_TOKEN=$(rand_hex)
EDGE_TOKEN=$(rand_hex)
SY_KEY_PRO=sy-local-pro-$(rand_hex)
SY_KEY_FREE=sy-local-free-$(rand_hex)
GRACE_PERIOD=${GRACE_PERIOD:-5s}
EDGE_THREADS=${EDGE_THREADS:-1}
export SWITCHYARD_LOG=${SWITCHYARD_LOG:-info}

KEEPING=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  # Stop everything even if stdout is gone (`| head`, closed terminal).
  set +e
  if [ "$KEEPING" -eq 1 ]; then
    exit "$rc"
  fi
  echo
  echo "stopping (edges drain first, up to $GRACE_PERIOD)..."
  local g=${GRACE_PERIOD%s}
  [[ "$g" =~ ^[0-9]+$ ]] || g=10
  stop_dir "$RUN" $((g + 5))
  echo "stopped; logs stay in $RUN"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'exit 129' HUP
# A closed stdout must end the script through the EXIT trap (which stops
# everything), not kill it outright.
trap '' PIPE

# addr N: a fixed port BASE_PORT+N, or port 0 (free; the process prints it).
addr() {
  if [ -n "${BASE_PORT:-}" ]; then
    echo "127.0.0.1:$((BASE_PORT + $1))"
  else
    echo "127.0.0.1:0"
  fi
}

# wait_line NAME FILE PREFIX: the rest of the first line of FILE starting
# with PREFIX, waiting up to 30 s while process NAME lives.
wait_line() {
  local name=$1 file=$2 prefix=$3 pid line
  pid=$(awk -v n="$name" '$1 == n {print $2}' "$RUN/pids")
  for _ in $(seq 1 300); do
    if line=$(grep -m1 "^$prefix" "$file" 2>/dev/null); then
      echo "${line#"$prefix"}"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited at start; its log ($RUN/$name.log):" >&2
      tail -20 "$RUN/$name.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  echo "$name did not print '$prefix' within 30 s; log: $RUN/$name.log" >&2
  return 1
}

# start NAME CMD...: runs CMD in its own session (Ctrl-C reaches only this
# script, which then stops it gracefully), stdout to NAME.out, stderr to
# NAME.log.
start() {
  local name=$1
  shift
  setsid "$@" </dev/null >"$RUN/$name.out" 2>"$RUN/$name.log" &
  echo "$name $!" >>"$RUN/pids"
}

pid_of() { awk -v n="$1" '$1 == n {print $2}' "$RUN/pids"; }

echo "run directory: $RUN"

# --- control plane ------------------------------------------------------------

store_args=(--data-dir "$RUN/control-data")
store_desc="embedded store in $RUN/control-data"
if [ -n "${ETCD_ENDPOINTS:-}" ]; then
  ETCD_PREFIX=${ETCD_PREFIX:-/switchyard-local/$RUN_ID}
  store_args=(--etcd-endpoints "$ETCD_ENDPOINTS" --etcd-prefix "$ETCD_PREFIX")
  store_desc="etcd $ETCD_ENDPOINTS, prefix $ETCD_PREFIX"
fi
SWITCHYARD_ADMIN_TOKEN=$ADMIN_TOKEN SWITCHYARD_EDGE_TOKEN=$EDGE_TOKEN \
  start control "$CONTROL_BIN" --listen "$(addr 0)" "${store_args[@]}"
CONTROL_ADDR=$(wait_line control "$RUN/control.out" "control plane listening on ")
CONTROL_URL=http://$CONTROL_ADDR
echo "control plane: $CONTROL_URL ($store_desc)"

# --- mock providers -------------------------------------------------------------

# Mock flags of the smoke scenario (see its header).
MOCK_FLAGS=(--ttft 20ms --tokens-per-sec 200 --output-tokens "8..=32" --record 0)
n=1
seed=1
for region in us eu; do
  for kind in openai anthropic; do
    name=mock-$region-$kind
    start "$name" "$LT_BIN" mock --listen "$(addr "$n")" --control-listen "$(addr $((n + 1)))" \
      --seed "$seed" "${MOCK_FLAGS[@]}"
    url=$(wait_line "$name" "$RUN/$name.out" "mock listening on ")
    ctl_url=$(wait_line "$name" "$RUN/$name.out" "mock control on ")
    var=$(echo "${region}_${kind}" | tr '[:lower:]' '[:upper:]')
    printf -v "MOCK_${var}_URL" '%s' "$url"
    printf -v "MOCK_${var}_CONTROL" '%s' "$ctl_url"
    echo "$name: $url (control $ctl_url)"
    n=$((n + 2))
    seed=$((seed + 1))
  done
done
export MOCK_US_OPENAI_URL MOCK_US_ANTHROPIC_URL MOCK_EU_OPENAI_URL MOCK_EU_ANTHROPIC_URL
export SY_KEY_PRO SY_KEY_FREE

# --- config ---------------------------------------------------------------------

export SWITCHYARD_SERVER=$CONTROL_URL SWITCHYARD_ADMIN_TOKEN=$ADMIN_TOKEN
export SWITCHYARD_AUTHOR=${SWITCHYARD_AUTHOR:-${USER:-deploy-local}}
"$CTL_BIN" validate -f "$ROOT/deploy/local/topology.yaml"
"$CTL_BIN" apply -f "$ROOT/deploy/local/topology.yaml" -m "deploy/local topology" -o json >"$RUN/apply.json"
VERSION=$(grep -oE '"version": *[0-9]+' "$RUN/apply.json" | head -1 | grep -oE '[0-9]+$')
echo "applied deploy/local/topology.yaml as version $VERSION"

# --- edges ----------------------------------------------------------------------

for region in us eu; do
  name=edge-$region
  if [ "$region" = us ]; then base=$n; else base=$((n + 2)); fi
  mkdir -p "$RUN/$name-snapshot"
  SWITCHYARD_EDGE_TOKEN=$EDGE_TOKEN start "$name" "$EDGE_BIN" \
    --control-plane "$CONTROL_URL" --region "$region" --node-id "$name-1" \
    --snapshot-dir "$RUN/$name-snapshot" \
    --listen "$(addr "$base")" --admin-listen "$(addr $((base + 1)))" \
    --call-log "$RUN/$name.calls.jsonl" --upgrade-sock "$RUN/$name.upgrade.sock" \
    --grace-period "$GRACE_PERIOD" --threads "$EDGE_THREADS"
done
for region in us eu; do
  name=edge-$region
  url=$(wait_line "$name" "$RUN/$name.out" "edge listening on ")
  admin=$(wait_line "$name" "$RUN/$name.out" "admin listening on ")
  var=$(echo "$region" | tr '[:lower:]' '[:upper:]')
  printf -v "EDGE_${var}_URL" '%s' "$url"
  printf -v "EDGE_${var}_ADMIN" '%s' "$admin"
done

# Wait until both edges serve VERSION and are ready (bounded: 30 s).
for region in us eu; do
  var=$(echo "$region" | tr '[:lower:]' '[:upper:]')
  admin_var=EDGE_${var}_ADMIN
  admin=${!admin_var}
  served=
  for _ in $(seq 1 300); do
    served=$(curl -s "$admin/admin/config" | grep -m1 -oE '^  "version": *[0-9]+' | grep -oE '[0-9]+$' || true)
    if [ "$served" = "$VERSION" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "$admin/readyz")" = 200 ]; then
      break
    fi
    sleep 0.1
  done
  if [ "$served" != "$VERSION" ]; then
    echo "edge-$region does not serve version $VERSION (serves '${served:-nothing}'); log: $RUN/edge-$region.log" >&2
    exit 1
  fi
  url_var=EDGE_${var}_URL
  echo "edge-$region: ${!url_var} (admin $admin), serving version $VERSION"
done

cat >"$RUN/env.sh" <<EOF
# source $RUN/env.sh
export SWITCHYARD_SERVER=$CONTROL_URL
export SWITCHYARD_ADMIN_TOKEN=$ADMIN_TOKEN
export SWITCHYARD_AUTHOR=$SWITCHYARD_AUTHOR
export EDGE_US_URL=$EDGE_US_URL EDGE_US_ADMIN=$EDGE_US_ADMIN
export EDGE_EU_URL=$EDGE_EU_URL EDGE_EU_ADMIN=$EDGE_EU_ADMIN
export SY_KEY_PRO=$SY_KEY_PRO SY_KEY_FREE=$SY_KEY_FREE
export MOCK_US_OPENAI_URL=$MOCK_US_OPENAI_URL MOCK_US_OPENAI_CONTROL=$MOCK_US_OPENAI_CONTROL
export MOCK_US_ANTHROPIC_URL=$MOCK_US_ANTHROPIC_URL MOCK_US_ANTHROPIC_CONTROL=$MOCK_US_ANTHROPIC_CONTROL
export MOCK_EU_OPENAI_URL=$MOCK_EU_OPENAI_URL MOCK_EU_OPENAI_CONTROL=$MOCK_EU_OPENAI_CONTROL
export MOCK_EU_ANTHROPIC_URL=$MOCK_EU_ANTHROPIC_URL MOCK_EU_ANTHROPIC_CONTROL=$MOCK_EU_ANTHROPIC_CONTROL
export PATH=$BIN_DIR:\$PATH
EOF

# --- checks: keys, tiers, regions ---------------------------------------------

chat() { # URL KEY MODEL -> HTTP status
  local auth=()
  [ -n "$2" ] && auth=(-H "authorization: Bearer $2")
  curl -s -o /dev/null -w '%{http_code}' "$1/v1/chat/completions" "${auth[@]}" \
    -H 'content-type: application/json' -H 'x-switchyard-feature: run-sh-check' \
    -d "{\"model\":\"$3\",\"messages\":[{\"role\":\"user\",\"content\":\"hello from run.sh $RANDOM\"}]}"
}
check() { # WHAT GOT WANT
  if [ "$2" = "$3" ]; then
    echo "  ok   $1 -> $2"
  else
    echo "  FAIL $1 -> $2 (expected $3)" >&2
    exit 1
  fi
}
echo "checks:"
check "edge-us, no key, gpt-mock" "$(chat "$EDGE_US_URL" "" gpt-mock)" 401
check "edge-us, pro key, gpt-mock" "$(chat "$EDGE_US_URL" "$SY_KEY_PRO" gpt-mock)" 200
check "edge-eu, pro key, claude-mock" "$(chat "$EDGE_EU_URL" "$SY_KEY_PRO" claude-mock)" 200
check "edge-eu, free key, gpt-mini" "$(chat "$EDGE_EU_URL" "$SY_KEY_FREE" gpt-mini)" 200
check "edge-eu, free key, gpt-mock (not allowed)" "$(chat "$EDGE_EU_URL" "$SY_KEY_FREE" gpt-mock)" 403
home_us=$(grep -c '"provider":"openai-us"' "$RUN/edge-us.calls.jsonl" || true)
home_eu=$(grep -c '"provider":"anthropic-eu"' "$RUN/edge-eu.calls.jsonl" || true)
check "edge-us served from its home region (openai-us calls)" "$([ "$home_us" -ge 1 ] && echo yes || echo no)" yes
check "edge-eu served from its home region (anthropic-eu calls)" "$([ "$home_eu" -ge 1 ] && echo yes || echo no)" yes

# --- scenario -----------------------------------------------------------------

rc=0
if [ -n "$SCENARIO" ]; then
  echo
  echo "running scenario $SCENARIO against edge-us (region us's OpenAI mock is the one the scenario faults)"
  set +e
  EDGE_URL=$EDGE_US_URL DIRECT_URL=$MOCK_US_OPENAI_URL \
    MOCK_A_CONTROL=$MOCK_US_OPENAI_CONTROL MOCK_B_CONTROL=$MOCK_EU_OPENAI_CONTROL \
    LOADTEST_KEY=$SY_KEY_PRO \
    "$LT_BIN" run "$ROOT/loadtest/scenarios/$SCENARIO.yaml" \
    --json "$RUN/$SCENARIO.json" --html "$RUN/$SCENARIO.html" \
    --watch "edge-us=$(pid_of edge-us)" --watch "mock-us-openai=$(pid_of mock-us-openai)" \
    "${LT_EXTRA[@]}" | (
    # On Ctrl-C the load generator stops the schedule and still prints its
    # (partial) report: keep tee alive to pass it on.
    trap '' INT
    tee "$RUN/$SCENARIO.txt"
  )
  rc=${PIPESTATUS[0]}
  set -e
fi

# --- summary ------------------------------------------------------------------

for region in us eu; do
  var=$(echo "$region" | tr '[:lower:]' '[:upper:]')
  admin_var=EDGE_${var}_ADMIN
  curl -s "${!admin_var}/metrics" >"$RUN/edge-$region.metrics.txt" || true
  curl -s "${!admin_var}/admin/health" >"$RUN/edge-$region.health.json" || true
done
sum_metric() { # FILE NAME LABEL-FILTER [PRINTF-FORMAT] -> sum of the matching samples
  awk -v n="$2" -v f="$3" -v fmt="${4:-%.0f}" '
    substr($1, 1, length(n)) == n && (length($1) == length(n) || substr($1, length(n) + 1, 1) == "{") && index($1, f) { s += $NF }
    END { printf fmt, s }' "$1"
}
echo
echo "edge-us by provider (switchyard_requests_total):"
for p in openai-us openai-eu anthropic-us anthropic-eu; do
  echo "  $p: $(sum_metric "$RUN/edge-us.metrics.txt" switchyard_requests_total "provider=\"$p\"")"
done
echo "edge-us failovers: $(sum_metric "$RUN/edge-us.metrics.txt" switchyard_failovers_total "")," \
  "ejections: $(sum_metric "$RUN/edge-us.metrics.txt" switchyard_target_ejections_total "")," \
  "budget soft alerts: $(sum_metric "$RUN/edge-us.metrics.txt" switchyard_budget_soft_alerts_total ""),"
echo "edge-us cost: \$$(sum_metric "$RUN/edge-us.metrics.txt" switchyard_cost_usd_total "" %.4f)," \
  "cache hits: $(grep -c '"cache":"HIT"' "$RUN/edge-us.calls.jsonl" || true)"
echo
echo "run directory: $RUN"
if [ -n "$SCENARIO" ]; then
  echo "  reports:   $RUN/$SCENARIO.txt $RUN/$SCENARIO.json $RUN/$SCENARIO.html"
fi
echo "  logs:      $RUN/{control,edge-us,edge-eu,mock-*}.log"
echo "  call logs: $RUN/edge-us.calls.jsonl $RUN/edge-eu.calls.jsonl"
echo "  metrics:   $RUN/edge-*.metrics.txt (at the end), live at $EDGE_US_ADMIN/metrics and $EDGE_EU_ADMIN/metrics"
echo "  health:    $RUN/edge-*.health.json, live at $EDGE_US_ADMIN/admin/health"

if [ "$KEEP" -eq 1 ]; then
  KEEPING=1
  echo
  echo "left running (--keep). To use it:"
  echo "  source $RUN/env.sh"
  echo "  switchyard-ctl history; switchyard-ctl edges"
  echo "  curl \$EDGE_EU_URL/v1/chat/completions -H \"authorization: Bearer \$SY_KEY_PRO\" \\"
  echo "    -H 'content-type: application/json' -d '{\"model\":\"gpt-mock\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"
  echo "To stop it:"
  echo "  deploy/local/run.sh --stop $RUN"
fi
exit "$rc"
