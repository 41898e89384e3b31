#!/usr/bin/env bash
# Static checks of deploy/docker (no Docker engine needed):
#  - hadolint on every Dockerfile (and on a known-bad one, which must fail);
#  - structure: multi-stage, builder installs cmake + protobuf-compiler,
#    non-root distroless/slim runtime, an adjacent .dockerignore;
#  - docker-compose.yml: `docker-compose config` (schema), every build's
#    Dockerfile and every mounted file exists, stop_grace_period above the
#    edges' --grace-period.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/checks/tools.sh
. deploy/checks/tools.sh
need_tool hadolint
need_pyyaml

dockerfiles=(deploy/docker/*.Dockerfile)
echo "hadolint: ${dockerfiles[*]}"
hadolint --failure-threshold warning "${dockerfiles[@]}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'FROM debian:latest\nRUN apt-get update && apt-get install curl\n' >"$tmp/Dockerfile"
if hadolint --failure-threshold warning "$tmp/Dockerfile" >/dev/null 2>&1; then
  echo "hadolint accepted a bad Dockerfile: the check is broken" >&2
  exit 1
fi

python3 - "${dockerfiles[@]}" <<'PY'
import os, re, sys
bad = []
for path in sys.argv[1:]:
    text = open(path).read()
    # Join continuation lines, drop comments.
    lines = [l for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.lstrip().startswith("#")]
    stages, cur = [], None
    for l in lines:
        word, _, rest = l.strip().partition(" ")
        word = word.upper()
        if word == "FROM":
            cur = {"from": rest.split()[0], "lines": []}
            stages.append(cur)
        elif cur is not None:
            cur["lines"].append((word, rest.strip()))
    def err(msg):
        bad.append(f"{path}: {msg}")
    if len(stages) < 2:
        err("not a multi-stage build")
        continue
    build, final = stages[0], stages[-1]
    runs = " ".join(r for w, r in build["lines"] if w == "RUN")
    for pkg in ("cmake", "protobuf-compiler"):
        if pkg not in runs:
            err(f"the builder stage does not install {pkg}")
    if "cargo build --release --locked" not in runs:
        err("the builder does not run `cargo build --release --locked`")
    if not re.match(r"(gcr\.io/distroless/cc|debian:[a-z]+-slim)", final["from"]):
        err(f"runtime image {final['from']} is not distroless/cc or debian slim")
    users = [r for w, r in final["lines"] if w == "USER"]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        err("the runtime stage does not switch to a non-root USER")
    if not any(w == "ENTRYPOINT" for w, _ in final["lines"]):
        err("no ENTRYPOINT in the runtime stage")
    if not any(w == "COPY" and "--from=" in r for w, r in final["lines"]):
        err("the runtime stage copies nothing from the builder")
    if not os.path.exists(path + ".dockerignore"):
        err("no adjacent .dockerignore (the build context is the repository root)")
for b in bad:
    print("FAIL", b)
if bad:
    sys.exit(1)
print(f"dockerfile structure: {len(sys.argv) - 1} ok")
PY

if need_tool docker-compose; then
  docker-compose -f deploy/docker/docker-compose.yml config -q
  echo "docker-compose config: ok"
else
  echo "docker-compose unavailable: schema check skipped (structure still checked)"
fi

python3 - deploy/docker/docker-compose.yml <<'PY'
import os, re, sys, yaml
path = sys.argv[1]
base = os.path.dirname(path)
doc = yaml.safe_load(open(path))
bad = []
def secs(v):
    m = re.fullmatch(r"(\d+)(ms|s|m)?", str(v))
    n, u = int(m.group(1)), m.group(2) or "s"
    return n / 1000 if u == "ms" else n * 60 if u == "m" else n
services = doc["services"]
for name, svc in services.items():
    b = svc.get("build")
    if b:
        df = os.path.normpath(os.path.join(base, b["context"], b["dockerfile"]))
        if not os.path.isfile(df):
            bad.append(f"{name}: Dockerfile {df} is missing")
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith(".") and not os.path.exists(os.path.join(base, src)):
            bad.append(f"{name}: mounted {src} does not exist")
    cmd = [str(c) for c in svc.get("command", [])]
    if "--grace-period" in cmd:
        grace = secs(cmd[cmd.index("--grace-period") + 1])
        stop = secs(svc.get("stop_grace_period", "10s"))
        if stop <= grace + 1:
            bad.append(f"{name}: stop_grace_period {stop}s must exceed --grace-period {grace}s + 1 s")
    for dep in (svc.get("depends_on") or {}):
        if dep not in services:
            bad.append(f"{name}: depends on unknown service {dep}")
edges = [n for n, s in services.items() if "--control-plane" in [str(c) for c in s.get("command", [])]]
if len(edges) < 2:
    bad.append(f"expected an edge per region, found {edges}")
if "etcd" not in services:
    bad.append("no etcd service")
for b in bad:
    print("FAIL", b)
if bad:
    sys.exit(1)
print(f"compose structure: {len(services)} services ok (edges: {', '.join(edges)})")
PY
echo "docker: ok"
