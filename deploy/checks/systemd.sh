#!/usr/bin/env bash
# Static checks of deploy/systemd: `systemd-analyze verify` of both units in
# a scratch root (stand-in binaries at the installed paths), and their
# sandboxing score (`systemd-analyze security --offline`, exposure <= 2.5 of
# 10). The units are also run for real, without systemd, by
# dataplane/tests/lifecycle.rs (systemd_units_start_reload_and_stop_cleanly).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/checks/tools.sh
. deploy/checks/tools.sh
need_tool systemd-analyze

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/usr/local/lib/switchyard" "$root/etc/systemd/system" "$root/etc/switchyard"
for b in switchyard-edge switchyard-control switchyard-ctl; do
  printf '#!/bin/sh\nexit 0\n' >"$root/usr/local/bin/$b"
  chmod 0755 "$root/usr/local/bin/$b"
done
install -m 0755 deploy/systemd/switchyard-edge-upgrade "$root/usr/local/lib/switchyard/"
install -m 0644 deploy/systemd/*.service "$root/etc/systemd/system/"
install -m 0640 deploy/systemd/edge.env deploy/systemd/control.env "$root/etc/switchyard/"
# The units depend on targets from the host's systemd (network-online, ...).
if [ -d /usr/lib/systemd/system ]; then
  mkdir -p "$root/usr/lib/systemd"
  cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
fi

units=()
for u in deploy/systemd/*.service; do units+=("$root/etc/systemd/system/$(basename "$u")"); done
out=$(systemd-analyze verify --root="$root" "${units[@]}" 2>&1) || {
  echo "$out" >&2
  exit 1
}
if [ -n "$out" ]; then
  echo "$out" >&2
  echo "systemd-analyze verify printed warnings" >&2
  exit 1
fi
echo "systemd-analyze verify: ok (${#units[@]} units)"

for u in "${units[@]}"; do
  line=$(systemd-analyze security --offline=yes --root="$root" "$u" 2>&1 | grep 'Overall exposure level') || {
    systemd-analyze security --offline=yes --root="$root" "$u" >&2 || true
    exit 1
  }
  score=$(echo "$line" | grep -oE 'level for [^:]+: [0-9.]+' | grep -oE '[0-9.]+$')
  echo "$(basename "$u"): exposure $score"
  awk -v s="$score" 'BEGIN { exit !(s <= 2.5) }' || {
    echo "$(basename "$u"): exposure $score > 2.5: tighten the sandbox" >&2
    exit 1
  }
done

# A unit with a typo must fail verify (the check can fail).
printf '[Service]\nExecStart=/usr/local/bin/switchyard-edge\nRestartt=always\n' >"$root/etc/systemd/system/bad.service"
if [ -z "$(systemd-analyze verify --root="$root" "$root/etc/systemd/system/bad.service" 2>&1)" ]; then
  echo "systemd-analyze verify accepted a misspelled key: the check is broken" >&2
  exit 1
fi
echo "systemd: ok"
