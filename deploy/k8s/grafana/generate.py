#!/usr/bin/env python3
"""Generates switchyard-edge.json (the Grafana dashboard of the edge's metrics).

Edit this file, then run it from this directory: python3 generate.py
deploy/checks/k8s.sh fails when the dashboard uses a metric the edge does not
export, or when an edge metric has no panel.
"""
import json
import sys
panels=[]
pid=[0]
y=[0]
x=[0]
DS={"type":"prometheus","uid":"${datasource}"}
def row(title):
    pid[0]+=1
    panels.append({"type":"row","id":pid[0],"title":title,"collapsed":False,"gridPos":{"h":1,"w":24,"x":0,"y":y[0]},"panels":[]})
    y[0]+=1
def panel(title, targets, unit="short", kind="timeseries", w=8, h=8, desc="", stack=False, thresholds=None):
    pid[0]+=1
    if x[0]+w>24:
        x[0]=0; y[0]+=h
    p={"type":kind,"id":pid[0],"title":title,"description":desc,"datasource":DS,
       "gridPos":{"h":h,"w":w,"x":x[0],"y":y[0]},
       "targets":[{"refId":chr(65+i),"expr":e,"legendFormat":l,"datasource":DS} for i,(e,l) in enumerate(targets)],
       "fieldConfig":{"defaults":{"unit":unit},"overrides":[]},"options":{}}
    if kind=="timeseries":
        p["fieldConfig"]["defaults"]["custom"]={"drawStyle":"line","lineWidth":1,"fillOpacity":60 if stack else 10,"stacking":{"mode":"normal" if stack else "none","group":"A"}}
        p["options"]={"legend":{"displayMode":"table","placement":"bottom","calcs":["lastNotNull","max"]},"tooltip":{"mode":"multi","sort":"desc"}}
    if kind=="stat":
        p["options"]={"reduceOptions":{"calcs":["lastNotNull"],"fields":"","values":False},"colorMode":"background","graphMode":"none"}
    if thresholds:
        p["fieldConfig"]["defaults"]["thresholds"]={"mode":"absolute","steps":thresholds}
    panels.append(p)
    x[0]+=w
    if x[0]>=24:
        x[0]=0; y[0]+=h
def newrow(title):
    if x[0]!=0:
        x[0]=0; y[0]+=8
    row(title)
def sel(extra=""):
    inner='job=~"$job", instance=~"$instance"'
    if extra: inner+=", "+extra
    return "{"+inner+"}"
R="$__rate_interval"
S=sel()
ERR=sel('status=~"5..|429"')
def rate(m, by=None, s=S):
    e=f"rate({m}{s}[{R}])"
    return f"sum by ({by}) ({e})" if by else f"sum({e})"
def q(p, m, by):
    return f"histogram_quantile({p}, sum by ({by}) (rate({m}_bucket{S}[{R}])))"
RED=[{"color":"red","value":None},{"color":"green","value":1}]

newrow("Traffic")
panel("Requests / s by status",[(rate("switchyard_requests_total","status"),"{{status}}")],"reqps",stack=True,desc="Client requests finished by the edges, by HTTP status.")
panel("Error ratio (5xx + 429)",[(f"{rate('switchyard_requests_total',s=ERR)} / clamp_min({rate('switchyard_requests_total')}, 1e-9)","error ratio")],"percentunit",
      desc="Share of client requests answered with 5xx or 429.",thresholds=[{"color":"green","value":None},{"color":"orange","value":0.01},{"color":"red","value":0.05}])
panel("Requests / s by route and provider",[(rate("switchyard_requests_total","route, provider"),"{{route}} via {{provider}}")],"reqps",desc="Which provider answered (after failover).")
newrow("Latency")
panel("Request latency p50 / p99",[(q(0.5,"switchyard_request_duration_seconds","le"),"p50"),(q(0.99,"switchyard_request_duration_seconds","le"),"p99")],"s",desc="Total request latency as seen by the edge.")
panel("Time to first token p50 / p99",[(q(0.5,"switchyard_ttft_seconds","le"),"p50"),(q(0.99,"switchyard_ttft_seconds","le"),"p99")],"s")
panel("TTFT p99 by provider",[(q(0.99,"switchyard_ttft_seconds","le, provider"),"{{provider}}")],"s",desc="A latency spike at one provider shows here first.")
newrow("Providers and failover")
panel("Provider up (active probes)",[(f"min by (provider) (switchyard_provider_up{S})","{{provider}}")],"short",kind="stat",thresholds=RED)
panel("Upstream attempts / s by outcome",[(rate("switchyard_upstream_attempts_total","target, outcome"),"{{target}} {{outcome}}")],"reqps")
panel("Failovers / s",[(rate("switchyard_failovers_total","route, to, reason"),"{{route}} -> {{to}} ({{reason}})")],"reqps")
panel("Target circuit state",[(f"max by (target) (switchyard_target_state{S})","{{target}}")],"short",
      desc="0 healthy, 1 probation, 2 ejected, 3 provider failing active probes.",
      thresholds=[{"color":"green","value":None},{"color":"orange","value":1},{"color":"red","value":2}])
panel("Target ejections / s",[(rate("switchyard_target_ejections_total","target, reason"),"{{target}} ({{reason}})")],"reqps")
panel("Retries skipped (retry budget spent)",[(rate("switchyard_retry_budget_exhausted_total","route"),"{{route}}")],"reqps")
panel("Streams cut after content",[(rate("switchyard_streams_incomplete_total","route, reason"),"{{route}} ({{reason}})")],"reqps")
newrow("Tokens and cost")
panel("Tokens / s by kind",[(rate("switchyard_tokens_total","kind"),"{{kind}}")],"short",stack=True)
panel("Cost USD / hour by model",[(f"{rate('switchyard_cost_usd_total','model')} * 3600","{{model}}")],"currencyUSD",desc="Spend rate from the price table; a cost spike shows here.")
panel("Cost USD / hour by team",[(f"{rate('switchyard_cost_by_team_usd_total','team')} * 3600","{{team}}")],"currencyUSD",desc="Teams not named in keys or budgets are `other`.")
panel("Cost USD / hour by feature",[(f"{rate('switchyard_cost_by_feature_usd_total','feature')} * 3600","{{feature}}")],"currencyUSD",desc="Features not named in keys or budgets are `other`.")
panel("Cost USD, last 24 h",[(f"sum(increase(switchyard_cost_usd_total{S}[24h]))","USD")],"currencyUSD",kind="stat")
newrow("Limits and budgets")
panel("Rate limited / s by limit",[(rate("switchyard_rate_limited_total","limit"),"{{limit}}")],"reqps")
panel("Budget events / s",[(rate("switchyard_budget_exceeded_total","budget"),"exceeded {{budget}}"),
                           (rate("switchyard_budget_soft_alerts_total","budget"),"soft alert {{budget}}"),
                           (rate("switchyard_budget_downgrades_total","budget, to"),"downgraded {{budget}} -> {{to}}")],"reqps")
panel("Global budgets: committed vs allowance (USD)",[(f"sum by (budget) (switchyard_budget_committed_usd{S})","committed {{budget}}"),
      (f"sum by (budget) (switchyard_budget_allowance_usd{S})","allowance {{budget}}")],"currencyUSD",
      desc="Spend plus reservations against the shares granted by the control plane, summed over edges.")
panel("Budget lease live",[(f"min by (instance, budget) (switchyard_budget_lease_live{S})","{{instance}} {{budget}}")],"short",kind="stat",thresholds=RED)
panel("Calls waiting for a budget grant / s",[(rate("switchyard_budget_grant_waits_total"),"waits")],"reqps")
panel("Rejected before routing / s",[(rate("switchyard_rejected_requests_total","reason"),"{{reason}}")],"reqps")
newrow("Cache")
panel("Cache hit ratio",[(f"{rate('switchyard_cache_hits_total')} / clamp_min({rate('switchyard_cache_hits_total')} + {rate('switchyard_cache_misses_total')}, 1e-9)","hit ratio")],"percentunit")
panel("Cache events / s",[(rate(f"switchyard_cache_{n}_total"),n.replace("_"," ")) for n in ["hits","misses","bypass","coalesced","stores","not_stored","evictions"]],"reqps")
panel("Cache bytes per edge",[(f"switchyard_cache_bytes{S}","{{instance}}")],"bytes")
newrow("Config and control plane")
panel("Config version served",[(f"switchyard_config_version{S}","{{instance}}")],"none",kind="stat",desc="Every edge of a region should serve the same version shortly after an apply.")
panel("Config age (s since commit)",[(f"max by (instance) (switchyard_config_age_seconds{S})","{{instance}}")],"s")
panel("Control plane connected",[(f"min by (instance) (switchyard_control_plane_connected{S})","{{instance}}")],"short",kind="stat",thresholds=RED,desc="0: the edge keeps serving its last version and reconnects.")
panel("Usage records pending",[(f"switchyard_usage_pending_records{S}","{{instance}}")],"short",
      desc="Usage records not yet acknowledged by the control plane; grows during a control-plane outage.")
panel("Usage reports / s by result",[(rate("switchyard_usage_reports_total","result"),"{{result}}")],"short")
panel("Usage stream connected",[(f"min by (instance) (switchyard_usage_stream_connected{S})","{{instance}}")],"short",kind="stat",thresholds=RED)
panel("Usage acked seq",[(f"switchyard_usage_acked_seq{S}","{{instance}}")],"none",desc="Highest usage record seq the control plane persisted.")
panel("Config applies / s by result",[(rate("switchyard_config_applies_total","result"),"{{result}}")],"short",desc="rejected > 0: an edge NACKed a version (see switchyard-ctl edges).")

var=lambda name,label,query:{"name":name,"type":"query","label":label,"datasource":DS,"query":{"query":query,"refId":name},"definition":query,"includeAll":True,"multi":True,"current":{},"refresh":2,"options":[],"hide":0,"sort":1}
dash={
 "title":"Switchyard edge","uid":"switchyard-edge","tags":["switchyard"],"timezone":"browser",
 "description":"Switchyard edge metrics (dataplane/src/telemetry/metrics.rs, dataplane/src/cache). Runbooks: docs/operations.md.",
 "schemaVersion":39,"version":1,"editable":True,"graphTooltip":1,
 "time":{"from":"now-1h","to":"now"},"refresh":"30s",
 "templating":{"list":[
   {"name":"datasource","type":"datasource","query":"prometheus","label":"Data source","current":{},"hide":0,"refresh":1,"options":[]},
   var("job","Job","label_values(switchyard_config_version, job)"),
   var("instance","Edge",'label_values(switchyard_config_version{job=~"$job"}, instance)'),
 ]},
 "annotations":{"list":[]},
 "panels":panels,
}
out = sys.argv[1] if len(sys.argv) > 1 else "switchyard-edge.json"
with open(out,"w") as f:
    json.dump(dash,f,indent=2)
    f.write("\n")
print(f"{out}: {len(panels)} panels")
