#!/usr/bin/env bash
# Static checks of deploy/k8s (no cluster needed):
#  - every overlay (and the Grafana kustomization) renders with kustomize;
#  - every rendered object validates against the Kubernetes 1.37 OpenAPI
#    schemas, strictly (unknown fields fail), offline (kubernetes-validate
#    bundles them); a known-bad manifest must fail;
#  - the rules that keep the edges safe: probes on /readyz and /healthz,
#    terminationGracePeriodSeconds > preStop + --grace-period + 1 s, a PDB
#    and a Service selecting the edges, 2 control-plane replicas, an etcd
#    StatefulSet, Secrets and ConfigMaps that exist, the overlay's region;
#  - the Grafana dashboard is what generate.py produces, and every metric it
#    queries exists in the edge (dataplane/src/telemetry/metrics.rs,
#    dataplane/src/cache/mod.rs); edge metrics without a panel are listed as
#    a warning.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/checks/tools.sh
. deploy/checks/tools.sh
need_kustomize
need_tool kubernetes-validate
need_pyyaml

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
overlays=()
for d in deploy/k8s/overlays/*/; do
  r=$(basename "$d")
  overlays+=("$r")
  kustomize_build "$d" >"$out/$r.yaml"
  echo "rendered overlay $r: $(grep -c '^kind:' "$out/$r.yaml") objects"
done
[ "${#overlays[@]}" -ge 2 ] || {
  echo "expected one overlay per region, found: ${overlays[*]}" >&2
  exit 1
}
kustomize_build deploy/k8s/grafana >"$out/grafana.yaml"
python3 deploy/k8s/grafana/generate.py "$out/dashboard.json" >/dev/null
if ! cmp -s "$out/dashboard.json" deploy/k8s/grafana/switchyard-edge.json; then
  echo "deploy/k8s/grafana/switchyard-edge.json is not what generate.py produces: run it" >&2
  exit 1
fi

kubernetes-validate --strict --quiet "$out"/*.yaml
echo "kubernetes-validate (strict, 1.37 schemas): ok"

cat >"$out/bad.yaml" <<'BAD'
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers:
        - name: c
          image: x
          readinesProbe: {httpGet: {path: /readyz, port: 1}}
BAD
if kubernetes-validate --strict --quiet "$out/bad.yaml" >/dev/null 2>&1; then
  echo "kubernetes-validate accepted a misspelled field: the check is broken" >&2
  exit 1
fi

python3 - "$out" "${overlays[@]}" <<'PY'
import json, os, re, sys, yaml
out, regions = sys.argv[1], sys.argv[2:]
bad = []
def dur(v):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", v)
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == "ms" else n * 60 if u == "m" else n

def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())

for region in regions:
    objs = [o for o in yaml.safe_load_all(open(f"{out}/{region}.yaml")) if o]
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    def err(msg):
        bad.append(f"overlay {region}: {msg}")
    edge = by.get(("Deployment", "switchyard-edge"))
    control = by.get(("Deployment", "switchyard-control"))
    if not edge or not control:
        err("missing the edge or control-plane Deployment")
        continue
    if ("StatefulSet", "switchyard-etcd") not in by:
        err("no etcd StatefulSet")
    if control["spec"].get("replicas") != 2:
        err("the control plane must run 2 replicas")
    pod = edge["spec"]["template"]
    c = pod["spec"]["containers"][0]
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        err("edge readinessProbe is not GET /readyz")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        err("edge livenessProbe is not GET /healthz")
    args = dict(a.lstrip("-").split("=", 1) for a in c.get("args", []) if "=" in a)
    grace = dur(args.get("grace-period", "10s"))
    pre = c.get("lifecycle", {}).get("preStop", {})
    pre_s = pre.get("sleep", {}).get("seconds", 0)
    if pre_s < 5:
        err("edge preStop must sleep (>= 5 s) so endpoints drain before SIGTERM")
    tgps = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if tgps <= pre_s + grace + 1:
        err(f"terminationGracePeriodSeconds {tgps} <= preStop {pre_s} + grace {grace} + 1")
    env = {e["name"]: e for e in c.get("env", [])}
    if env.get("SWITCHYARD_REGION", {}).get("value") != region:
        err(f"edge SWITCHYARD_REGION is {env.get('SWITCHYARD_REGION')}, expected {region}")
    for e in list(c.get("env", [])) + list(control["spec"]["template"]["spec"]["containers"][0].get("env", [])):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            s = by.get(("Secret", ref["name"]))
            if not s or ref["key"] not in {**s.get("data", {}), **s.get("stringData", {})}:
                err(f"secret {ref['name']}/{ref['key']} (env {e['name']}) does not exist")
    for ef in c.get("envFrom", []):
        if "secretRef" in ef and ("Secret", ef["secretRef"]["name"]) not in by:
            err(f"envFrom secret {ef['secretRef']['name']} does not exist")
    for v in pod["spec"].get("volumes", []):
        if "configMap" in v:
            cm = by.get(("ConfigMap", v["configMap"]["name"]))
            if not cm:
                err(f"ConfigMap {v['configMap']['name']} does not exist")
    cfg_arg = args.get("config")
    if cfg_arg:
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        d, f = os.path.split(cfg_arg)
        vol = next((v for v in pod["spec"]["volumes"] if v["name"] == mounts.get(d)), None)
        cm = by.get(("ConfigMap", (vol or {}).get("configMap", {}).get("name", "")))
        if not cm or f not in cm.get("data", {}):
            err(f"--config {cfg_arg} is not a key of a mounted ConfigMap")
    labels = pod["metadata"]["labels"]
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget" and selects(o["spec"]["selector"]["matchLabels"], labels)]
    if not pdbs:
        err("no PodDisruptionBudget selects the edges")
    svcs = [o for o in objs if o["kind"] == "Service" and selects(o["spec"].get("selector", {}), labels)]
    if not svcs:
        err("no Service selects the edges")
    sc = c.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False or not pod["spec"].get("securityContext", {}).get("runAsNonRoot"):
        err("edge must run as non-root without privilege escalation")

# Grafana dashboard vs the edge's metric names.
src = open("dataplane/src/telemetry/metrics.rs").read() + open("dataplane/src/cache/mod.rs").read()
defined = set(re.findall(r'"(switchyard_[a-z_]+)"', src))
dash = json.load(open("deploy/k8s/grafana/switchyard-edge.json"))
exprs = []
def walk(p):
    for t in p.get("targets", []):
        exprs.append(t["expr"])
    for q in p.get("panels", []):
        walk(q)
for p in dash["panels"]:
    walk(p)
used = set()
for e in exprs:
    for m in re.findall(r"\b(switchyard_[a-z_]+)", e):
        used.add(re.sub(r"_(bucket|sum|count)$", "", m) if m not in defined else m)
unknown = sorted(used - defined)
if unknown:
    bad.append(f"dashboard uses metrics the edge does not export: {unknown} (fix deploy/k8s/grafana/generate.py and run it)")
unused = sorted(defined - used)
if unused:
    # A new metric should get a panel, but that must not block its author.
    print(f"WARNING edge metrics without a dashboard panel: {unused} (add one in deploy/k8s/grafana/generate.py and run it)")
ids = [p["id"] for p in dash["panels"]]
if len(ids) != len(set(ids)):
    bad.append("dashboard panel ids are not unique")
for b in bad:
    print("FAIL", b)
if bad:
    sys.exit(1)
print(f"k8s rules: ok for {', '.join(regions)}; dashboard: {len(exprs)} queries over {len(used)} metrics, all defined")
PY
echo "k8s: ok"
