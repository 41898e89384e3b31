#!/usr/bin/env bash
# Runs Switchyard's whole test suite from a fresh machine:
# installs the system packages the build and the tests need when missing
# (cmake for Pingora, protoc for the gRPC schema, etcd for the control-plane
# tests), checks formatting and lints, runs the static deploy checks
# (deploy/checks/run-all.sh: shellcheck, hadolint + compose, kustomize +
# Kubernetes schemas + dashboard, systemd units; they install their own tools),
# then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings

# Static deploy checks; a failure fails the run, after the tests ran.
deploy_checks=0
deploy/checks/run-all.sh || deploy_checks=1

# The main job, deploy/local/run.sh, on the debug binaries (no release
# build): control plane, two regions of mocks and edges, the topology applied
# and served, keys and regions checked, the 15 s smoke scenario with its
# region failover (SLOs enforced), everything stopped.
cargo build --workspace --bins -q
BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" NO_BUILD=1 deploy/local/run.sh || deploy_checks=1

# The official OpenAI and Anthropic Python SDKs against a real edge.
if command -v python3 >/dev/null 2>&1 && python3 -c 'import venv' 2>/dev/null; then
  deploy/checks/sdk.sh
else
  echo "skipping the SDK check: python3 with venv is not available"
fi

tests=0
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests
  cargo test --workspace --doc -q
  cargo nextest run --workspace --no-fail-fast "$@" || tests=$?
else
  cargo test --workspace --no-fail-fast "$@" || tests=$?
fi
if [ "$deploy_checks" -ne 0 ]; then
  echo "deploy checks or deploy/local/run.sh failed (see above)" >&2
  exit 1
fi
exit "$tests"
