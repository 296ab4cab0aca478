#!/usr/bin/env bash
# Checks the operator kit in deploy/: alert rules (promtool check + unit tests), the Grafana
# dashboard, that every metric name the alerts and the dashboard use is listed in
# deploy/metrics.txt, and the Kubernetes manifests (YAML, consistency, schemas where a
# validator is at hand, the embedded imgate config with `imgate check-config` where a built
# binary is at hand). Installs promtool when it is missing: promtool alone, extracted from
# Debian's `prometheus` package (no server, no dependencies), into a cache directory.
#
#   bash deploy/check.sh          exit 0 when every check passes (skipped ones print SKIP)
#
# Environment: PROMTOOL (a promtool to use), IMGATE_BIN (an imgate binary for check-config),
# IMGATE_TOOLS_DIR (where promtool is installed; default ~/.cache/imgate-deploy/bin).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

DEPLOY=deploy
ALERTS=$DEPLOY/prometheus/alerts.yml
ALERT_TESTS=$DEPLOY/prometheus/alerts_test.yml
DASHBOARD=$DEPLOY/grafana/imgate.json
METRICS=$DEPLOY/metrics.txt
K8S=$DEPLOY/kubernetes
# Series that Prometheus itself makes for every target; not on imgate's /metrics.
SYNTHETIC_SERIES="up"
TOOLS_DIR=${IMGATE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/imgate-deploy/bin}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

passed=0 failed=0 skipped=0
summary=()
# check NAME COMMAND...: runs one check, prints its output indented, records the result.
# A command that exits 77 was skipped (its output says why).
check() {
  local name=$1 rc
  shift
  echo "== $name"
  "$@" >"$WORK/out" 2>&1
  rc=$?
  sed 's/^/   /' "$WORK/out"
  case $rc in
    0) passed=$((passed + 1)); summary+=("ok    $name") ;;
    77) skipped=$((skipped + 1)); summary+=("SKIP  $name ($(tail -n 1 "$WORK/out"))") ;;
    *) failed=$((failed + 1)); summary+=("FAIL  $name") ;;
  esac
}

# ---------------------------------------------------------------------------------- tools

python_ok=1
if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "== installing PyYAML (pip)"
  python3 -m pip install -q pyyaml >/dev/null 2>&1 || python_ok=0
fi
if [ "$python_ok" = 1 ] && ! python3 -c 'import yaml' 2>/dev/null; then python_ok=0; fi

promtool_note=""
install_promtool() {
  # promtool is a single static binary in Debian's `prometheus` package: download that package
  # (no install, so no prometheus user, service or web-UI dependencies) and take promtool out.
  local start end deb
  if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    echo "promtool is missing and there is no apt-get/dpkg-deb to fetch it: install promtool"
    return 1
  fi
  start=$(date +%s%N)
  mkdir -p "$WORK/deb"
  if ! (cd "$WORK/deb" && apt-get download -qq prometheus >/dev/null 2>&1); then
    echo "apt-get download prometheus failed; running apt-get update once"
    apt-get update -qq >/dev/null 2>&1 || { echo "apt-get update failed"; return 1; }
    (cd "$WORK/deb" && apt-get download -qq prometheus >/dev/null) || return 1
  fi
  deb=$(ls "$WORK"/deb/prometheus_*.deb)
  dpkg-deb -x "$deb" "$WORK/deb/root" || return 1
  mkdir -p "$TOOLS_DIR" || return 1
  install -m 0755 "$WORK/deb/root/usr/bin/promtool" "$TOOLS_DIR/promtool" || return 1
  end=$(date +%s%N)
  promtool_note=$(printf 'installed promtool from %s into %s in %d.%01d s' "$(basename "$deb")" \
    "$TOOLS_DIR" $(((end - start) / 1000000000)) $(((end - start) / 100000000 % 10)))
  echo "$promtool_note"
}

PROMTOOL=${PROMTOOL:-}
if [ -z "$PROMTOOL" ]; then
  if command -v promtool >/dev/null; then
    PROMTOOL=$(command -v promtool)
  elif [ -x "$TOOLS_DIR/promtool" ]; then
    PROMTOOL=$TOOLS_DIR/promtool
  else
    echo "== installing promtool"
    if install_promtool; then PROMTOOL=$TOOLS_DIR/promtool; fi
  fi
fi
if [ -n "$PROMTOOL" ]; then
  echo "== promtool: $PROMTOOL ($("$PROMTOOL" --version 2>&1 | head -n 1))"
fi

need_promtool() {
  [ -n "$PROMTOOL" ] || { echo "promtool is not available"; return 1; }
}
need_python() {
  [ "$python_ok" = 1 ] || { echo "python3 with PyYAML is not available"; return 1; }
}

# ------------------------------------------------------------------------------- checks

check_rules() {
  need_promtool && "$PROMTOOL" check rules "$ALERTS"
}

test_rules() {
  need_promtool && "$PROMTOOL" test rules "$ALERT_TESTS"
}

# Every alert: a `for:`, a severity, summary/description/runbook annotations; and in the unit
# tests at least one case where it fires and one where it does not.
alert_hygiene() {
  need_python && python3 - "$ALERTS" "$ALERT_TESTS" <<'PY'
import sys, yaml
rules_file, tests_file = sys.argv[1:3]
rules = [r for g in yaml.safe_load(open(rules_file))["groups"] for r in g["rules"]]
tests = yaml.safe_load(open(tests_file))
fires, quiet = set(), set()
for t in tests.get("tests", []):
    for case in t.get("alert_rule_test", []) or []:
        (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
problems = []
alerts = [r for r in rules if "alert" in r]
for r in alerts:
    name = r["alert"]
    if "for" not in r:
        problems.append(f"{name}: no for:")
    if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
        problems.append(f"{name}: severity label missing or not critical|warning|info")
    for key in ("summary", "description", "runbook"):
        if not r.get("annotations", {}).get(key):
            problems.append(f"{name}: no {key} annotation")
    if name not in fires:
        problems.append(f"{name}: no unit test where it fires")
    if name not in quiet:
        problems.append(f"{name}: no unit test where it stays quiet")
unknown = (fires | quiet) - {r["alert"] for r in alerts}
for name in sorted(unknown):
    problems.append(f"tests name an alert that does not exist: {name}")
for p in problems:
    print(p)
print(f"{len(alerts)} alerts; each fires and stays quiet in a test" if not problems else f"{len(problems)} problem(s)")
sys.exit(1 if problems else 0)
PY
}

dashboard_json() {
  need_python && python3 - "$DASHBOARD" <<'PY'
import json, sys
path = sys.argv[1]
try:
    d = json.load(open(path))
except ValueError as e:
    print(f"{path}: not valid JSON: {e}")
    sys.exit(1)
problems = []
if d.get("uid") != "imgate":
    problems.append('uid is not "imgate"')
variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    problems.append("no `datasource` variable of type datasource for prometheus")
app = variables.get("app")
query = app and app.get("query")
query = query.get("query") if isinstance(query, dict) else query
if not app or "label_values(imgate_http_requests_total" not in (query or ""):
    problems.append("no `app` variable from label_values(imgate_http_requests_total, app)")
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
all_panels = list(panels(d.get("panels", [])))
ids = [p.get("id") for p in all_panels]
if len(ids) != len(set(ids)):
    problems.append("duplicate panel ids")
targets = [t for p in all_panels for t in p.get("targets", [])]
if not targets:
    problems.append("no panel has a query")
for p in all_panels:
    if p.get("type") != "row" and not p.get("targets"):
        problems.append(f"panel {p.get('title')!r} has no query")
for p in problems:
    print(p)
print(f"{len(all_panels)} panels, {len(targets)} queries, variables: {', '.join(variables)}")
sys.exit(1 if problems else 0)
PY
}

# The dashboard's PromQL, with Grafana's variables replaced, as recording rules: promtool then
# parses every expression.
dashboard_promql() {
  need_python && need_promtool || return 1
  python3 - "$DASHBOARD" "$WORK/dashboard_rules.yml" <<'PY' || return 1
import json, re, sys, yaml
d = json.load(open(sys.argv[1]))
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
def grafana_to_promql(expr):
    expr = re.sub(r"\$\{?__\w+\}?", "5m", expr)            # $__rate_interval, $__range, ...
    return re.sub(r"\$\{?\w+(:\w+)?\}?", ".*", expr)       # $app, ${job:regex}, ...
rules = []
for p in panels(d.get("panels", [])):
    for t in p.get("targets", []):
        if t.get("expr"):
            rules.append({"record": f"dashboard:panel_{p.get('id')}_{t.get('refId', 'A')}",
                          "expr": grafana_to_promql(t["expr"])})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(rules)} expressions")
PY
  "$PROMTOOL" check rules "$WORK/dashboard_rules.yml"
}

# Metric names used by the alerts, the alert tests' input series and the dashboard, against
# deploy/metrics.txt.
metric_names() {
  need_python && python3 - "$METRICS" "$ALERTS" "$ALERT_TESTS" "$DASHBOARD" "$SYNTHETIC_SERIES" <<'PY'
import json, re, sys, yaml
metrics_file, alerts_file, tests_file, dashboard_file, synthetic = sys.argv[1:6]
known = set()
for line in open(metrics_file):
    line = line.strip()
    if line and not line.startswith("#"):
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line):
            print(f"{metrics_file}: not a metric name: {line!r}")
            sys.exit(1)
        known.add(line)
synthetic = set(synthetic.split())

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "inf", "nan", "atan2"}
def names_in(expr):
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names or durations."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # strings
    s = re.sub(r"#[^\n]*", " ", s)                                            # comments
    names = set(re.findall(r'__name__\s*=\s*"([^"]*)"', expr))                # {__name__="x"}
    s = re.sub(r"\{[^}]*\}", " ", s)                                          # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)                                         # ranges
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    for m in re.finditer(r"(?<![\w:.])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        tok = m.group(0)
        if tok.lower() in KEYWORDS or s[m.end():].lstrip().startswith("("):
            continue
        names.add(tok)
    return names

uses = {}  # name -> where
def use(expr, where):
    for n in names_in(expr):
        uses.setdefault(n, set()).add(where)

for g in yaml.safe_load(open(alerts_file))["groups"]:
    for r in g["rules"]:
        use(str(r["expr"]), f"alert {r.get('alert') or r.get('record')}")
for t in yaml.safe_load(open(tests_file)).get("tests", []):
    for s in t.get("input_series", []):
        use(s["series"], "alerts_test.yml input series")
    for case in t.get("promql_expr_test", []) or []:
        use(case["expr"], "alerts_test.yml promql_expr_test")

GRAFANA_VAR = r"\$\{?\w+(:\w+)?\}?"
d = json.load(open(dashboard_file))
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
for p in panels(d.get("panels", [])):
    for t in p.get("targets", []):
        if t.get("expr"):
            use(re.sub(GRAFANA_VAR, "5m", t["expr"]), f"dashboard panel {p.get('title')!r}")
for v in d.get("templating", {}).get("list", []):
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else (q or "")
    q = re.sub(GRAFANA_VAR, "5m", q)
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q) or \
        re.fullmatch(r"\s*(?:query_result|metrics)\((.*)\)\s*", q)
    if m:
        use(m.group(1), f"dashboard variable {v.get('name')}")

unknown = sorted(n for n in uses if n not in known and n not in synthetic)
for n in unknown:
    print(f"not in {metrics_file}: {n}  (used by {', '.join(sorted(uses[n]))})")
used_known = sorted(n for n in uses if n in known)
unused = sorted(known - set(uses))
print(f"{len(used_known)} of {len(known)} listed names used"
      + (f"; synthetic: {', '.join(sorted(set(uses) & synthetic))}" if set(uses) & synthetic else "")
      + (f"; not used: {', '.join(unused)}" if unused else ""))
sys.exit(1 if unknown else 0)
PY
}

yaml_parses() {
  need_python && python3 - "$K8S"/*.yaml "$ALERTS" "$ALERT_TESTS" <<'PY'
import sys, yaml
bad = 0
for path in sys.argv[1:]:
    try:
        docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
        kinds = ", ".join(d["kind"] for d in docs if isinstance(d, dict) and "kind" in d)
        print(f"{path}: {len(docs)} document(s){' ' + kinds if kinds else ''}")
    except yaml.YAMLError as e:
        print(f"{path}: {e}")
        bad += 1
sys.exit(1 if bad else 0)
PY
}

# The manifests agree with each other and with the embedded imgate config.
k8s_consistency() {
  need_python && python3 - "$K8S" <<'PY'
import os, re, sys, yaml
k8s = sys.argv[1]
def load(name):
    return yaml.safe_load(open(os.path.join(k8s, name)))
problems = []
def need(cond, msg):
    if not cond:
        problems.append(msg)

kust = load("kustomization.yaml")
for r in kust.get("resources", []):
    need(os.path.exists(os.path.join(k8s, r)), f"kustomization lists a missing file: {r}")
listed = set(kust.get("resources", []))
for f in sorted(os.listdir(k8s)):
    if f.endswith(".yaml") and f not in listed and f not in ("kustomization.yaml", "secret.example.yaml"):
        problems.append(f"{f} is not listed in kustomization.yaml")

dep, svc, cm = load("deployment.yaml"), load("service.yaml"), load("configmap.yaml")
pdb, hpa, sm, secret = load("pdb.yaml"), load("hpa.yaml"), load("servicemonitor.yaml"), load("secret.example.yaml")
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
labels = dep["spec"]["template"]["metadata"]["labels"]
sel = dep["spec"]["selector"]["matchLabels"]
need(all(labels.get(k) == v for k, v in sel.items()), "deployment selector does not match its pod labels")
need(dep["spec"].get("replicas", 1) >= 2, "fewer than 2 replicas")

toml_text = cm["data"]["imgate.toml"]
try:
    import tomllib
    config = tomllib.loads(toml_text)
except ImportError:
    config = None
    print("tomllib missing (Python < 3.11): TOML not parsed")
except Exception as e:
    problems.append(f"configmap imgate.toml is not valid TOML: {e}")
    config = None
if config is not None:
    server = config.get("server", {})
    need(server.get("admin_listen", "").startswith("0.0.0.0:"), "admin_listen is not 0.0.0.0:…")
    need(server.get("listen", "").startswith("0.0.0.0:"), "listen is not 0.0.0.0:…")
    need(server.get("listen", ":").rsplit(":", 1)[1] == str(ports.get("http")),
         "server.listen port differs from the container port http")
    need(server.get("admin_listen", ":").rsplit(":", 1)[1] == str(ports.get("admin")),
         "server.admin_listen port differs from the container port admin")
    drain = (server.get("drain_timeout_ms", 10000) + server.get("shutdown_delay_ms", 5000)) / 1000
    sleep = (c.get("lifecycle", {}).get("preStop", {}).get("sleep") or {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    need(grace >= sleep + drain + 1,
         f"terminationGracePeriodSeconds {grace} < preStop {sleep} s + shutdown delay and drain {drain} s + 1")
    print(f"drain: preStop sleep {sleep} s + drain_timeout {drain:g} s; terminationGracePeriodSeconds {grace} s")
    need(config.get("log", {}).get("format") == "json", "the config's [log] format is not json")

need(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, "readiness is not /readyz on admin")
need(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, "liveness is not /healthz on admin")
sc = c.get("securityContext", {})
need(sc.get("readOnlyRootFilesystem") is True, "root filesystem is not read-only")
need(sc.get("allowPrivilegeEscalation") is False, "privilege escalation allowed")
need(pod.get("securityContext", {}).get("runAsNonRoot") is True, "runAsNonRoot not set")
need(c.get("resources", {}).get("requests") and c.get("resources", {}).get("limits"), "no resource requests/limits")

mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
vols = {v["name"]: v for v in pod["volumes"]}
need(vols["config"]["configMap"]["name"] == cm["metadata"]["name"], "config volume names another ConfigMap")
need(mounts.get("config") == "/etc/imgate", "the ConfigMap is not mounted at /etc/imgate")
need("/etc/imgate/imgate.toml" in c.get("args", []) or not c.get("args"), "args name another config path")
secret_dir = mounts.get("secrets", "")
need(vols["secrets"]["secret"]["secretName"] == secret["metadata"]["name"], "secret volume names another Secret")
for path in re.findall(r'"file:([^"]+)"', toml_text):
    d, key = os.path.split(path)
    need(d == secret_dir, f"{path} is not under the Secret mount {secret_dir}")
    need(key in secret.get("stringData", {}), f"secret.example.yaml has no key {key} (read by the config)")
for key in secret.get("stringData", {}):
    need(f"file:{secret_dir}/{key}" in toml_text, f"secret key {key} is not used by the config")

svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
for p in svc["spec"]["ports"]:
    need(p["targetPort"] in ports, f"service port {p['name']} targets unknown container port {p['targetPort']}")
need(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "service selector misses the pods")
need(all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()), "PDB selector misses the pods")
need(hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], "HPA targets another Deployment")
need(hpa["spec"]["minReplicas"] >= 2, "HPA minReplicas < 2")
svc_labels = svc["metadata"]["labels"]
need(all(svc_labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()),
     "ServiceMonitor selector misses the Service")
for e in sm["spec"]["endpoints"]:
    need(e.get("port") in svc_ports, f"ServiceMonitor scrapes unknown service port {e.get('port')}")
    need(e.get("path") == "/metrics", "ServiceMonitor path is not /metrics")
    need(svc_ports.get(e.get("port"), {}).get("targetPort") == "admin", "metrics port is not the admin port")
# The NetworkPolicy: it selects the pods, opens the API port, and the admin port only to the
# monitoring namespace.
netpol = load("networkpolicy.yaml")
np_spec = netpol["spec"]
need(all(labels.get(k) == v for k, v in np_spec["podSelector"]["matchLabels"].items()),
     "NetworkPolicy selector misses the pods")
need("Ingress" in np_spec.get("policyTypes", []), "NetworkPolicy does not govern ingress")
admin_names = {"admin", ports.get("admin")}
api_names = {"http", ports.get("http")}
admin_from, api_open = [], False
for rule in np_spec.get("ingress", []):
    rule_ports = {p.get("port") for p in rule.get("ports", [])}
    need(rule_ports, "a NetworkPolicy rule opens every port")
    need(rule_ports <= admin_names | api_names, f"NetworkPolicy opens unknown ports {rule_ports}")
    if rule_ports & api_names:
        api_open = True
    if rule_ports & admin_names:
        admin_from.append(rule.get("from"))
need(api_open, "NetworkPolicy does not open the API port")
need(bool(admin_from), "NetworkPolicy does not open the admin port to monitoring")
for peers in admin_from:
    need(peers and all(set(peer) == {"namespaceSelector"}
                       and peer["namespaceSelector"].get("matchLabels") == {"kubernetes.io/metadata.name": "monitoring"}
                       for peer in peers),
         f"the admin port is open beyond the monitoring namespace: {peers}")
print(f"network policy: API port open, admin port from namespace monitoring only")

for p in problems:
    print(p)
print("manifests agree" if not problems else f"{len(problems)} problem(s)")
sys.exit(1 if problems else 0)
PY
}

# Renders the kustomization (kubectl's built-in kustomize) and validates every object against
# the Kubernetes API schemas with kubernetes-validate (PyPI), in strict mode.
k8s_schemas() {
  command -v kubectl >/dev/null || { echo "kubectl (kustomize) not installed"; return 77; }
  kubectl kustomize "$K8S" >"$WORK/rendered.yaml" || return 1
  echo "kubectl kustomize: $(grep -c '^kind:' "$WORK/rendered.yaml") objects"
  if ! command -v kubernetes-validate >/dev/null; then
    python3 -m pip install -q kubernetes-validate >/dev/null 2>&1 || true
  fi
  command -v kubernetes-validate >/dev/null || { echo "kubernetes-validate not installable"; return 77; }
  # ServiceMonitor is a CRD: kubernetes-validate has no schema for it and only warns.
  kubernetes-validate --strict --quiet "$WORK/rendered.yaml" "$K8S/secret.example.yaml" 2>&1 \
    | grep -v "Couldn't find schema for kind ServiceMonitor"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] && echo "kubernetes-validate --strict: valid (ServiceMonitor: no schema, not checked)"
  return "$rc"
}

# `imgate check-config` on the ConfigMap's config, with the Secret's placeholder files.
imgate_check_config() {
  local bin=${IMGATE_BIN:-}
  if [ -z "$bin" ]; then
    local target=${CARGO_TARGET_DIR:-target}
    for candidate in "$target/release/imgate" "$target/debug/imgate" "$(command -v imgate || true)"; do
      if [ -n "$candidate" ] && [ -x "$candidate" ]; then bin=$candidate; break; fi
    done
  fi
  [ -n "$bin" ] || { echo "no imgate binary (cargo build, or set IMGATE_BIN)"; return 77; }
  need_python || return 1
  python3 - "$K8S" "$WORK/cfg" <<'PY' || return 1
import os, sys, yaml
k8s, out = sys.argv[1:3]
cm = yaml.safe_load(open(os.path.join(k8s, "configmap.yaml")))
secret = yaml.safe_load(open(os.path.join(k8s, "secret.example.yaml")))
os.makedirs(os.path.join(out, "secrets"))
for key, value in secret["stringData"].items():
    open(os.path.join(out, "secrets", key), "w").write(value + "\n")
text = cm["data"]["imgate.toml"].replace('"file:/run/secrets/imgate/', f'"file:{out}/secrets/')
open(os.path.join(out, "imgate.toml"), "w").write(text)
PY
  echo "$bin check-config (secret paths pointed at secret.example.yaml's placeholders)"
  "$bin" check-config --config "$WORK/cfg/imgate.toml" >"$WORK/cfg/effective.toml" || return 1
  if grep -q 'FAKE-' "$WORK/cfg/effective.toml"; then
    echo "check-config printed a secret"
    return 1
  fi
  echo "valid; $(grep -c '^\[\[apps\]\]' "$WORK/cfg/effective.toml") apps, $(grep -c '^\[\[clients\]\]' "$WORK/cfg/effective.toml") clients"
}

check "promtool check rules $ALERTS" check_rules
check "promtool test rules $ALERT_TESTS" test_rules
check "alerts: for, severity, annotations, fire/quiet tests" alert_hygiene
check "dashboard JSON $DASHBOARD" dashboard_json
check "dashboard PromQL parses (promtool)" dashboard_promql
check "metric names in $METRICS" metric_names
check "YAML parses" yaml_parses
check "kubernetes manifests agree" k8s_consistency
check "kubernetes schemas (kustomize + kubernetes-validate)" k8s_schemas
check "imgate check-config on the ConfigMap" imgate_check_config

echo
echo "== deploy/check.sh summary"
[ -n "$promtool_note" ] && echo "   $promtool_note"
for line in "${summary[@]}"; do echo "   $line"; done
echo "deploy-check: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
