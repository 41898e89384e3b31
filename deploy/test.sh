#!/usr/bin/env bash
# Runs Switchyard's whole test suite from a fresh machine:
# installs the system packages the build and the tests need when missing
# (cmake for Pingora, protoc for the gRPC schema, etcd for the control-plane
# tests), checks formatting and lints, then runs every test.
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

# The official OpenAI and Anthropic Python SDKs against a real edge.
if command -v python3 >/dev/null 2>&1 && python3 -c 'import venv' 2>/dev/null; then
  deploy/checks/sdk.sh
else
  echo "skipping the SDK check: python3 with venv is not available"
fi

if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests
  cargo test --workspace --doc -q
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
