#!/usr/bin/env bash
# Runs shellcheck over every shell script under deploy/ (and a known-bad sample,
# so a shellcheck that silently passes everything is caught).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/checks/tools.sh
. deploy/checks/tools.sh
need_tool shellcheck

scripts=()
while IFS= read -r f; do scripts+=("$f"); done < <(
  {
    find deploy -name '*.sh' -type f -not -path 'deploy/local/run/*'
    echo deploy/systemd/switchyard-edge-upgrade
  } | sort
)
echo "shellcheck: ${#scripts[@]} scripts"
shellcheck -x "${scripts[@]}"

bad=$(mktemp)
trap 'rm -f "$bad"' EXIT
# shellcheck disable=SC2016  # the $1 is meant literally
printf '#!/usr/bin/env bash\nrm -rf $1/*\n' >"$bad"
if shellcheck "$bad" >/dev/null 2>&1; then
  echo "shellcheck accepted a script with an unquoted variable: the check is broken" >&2
  exit 1
fi
echo "shellcheck: ok"
