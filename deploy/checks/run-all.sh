#!/usr/bin/env bash
# Runs every static deploy check (shellcheck, Dockerfiles + compose,
# Kubernetes manifests + Grafana dashboard, systemd units), each one even if
# an earlier one failed; exit status 1 if any failed. Called by deploy/test.sh
# (which also runs the SDK check, deploy/checks/sdk.sh, and the Rust tests;
# the lifecycle tests run the systemd units for real).
set -euo pipefail
cd "$(dirname "$0")/../.."

checks=(shellcheck docker k8s systemd)
failed=()
for c in "${checks[@]}"; do
  echo "== deploy check: $c"
  if ! bash "deploy/checks/$c.sh"; then
    failed+=("$c")
    echo "== deploy check $c FAILED"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "deploy checks: ${#failed[@]} of ${#checks[@]} FAILED (${failed[*]})"
  exit 1
fi
echo "deploy checks: all ${#checks[@]} ok"
