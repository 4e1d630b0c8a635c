#!/usr/bin/env python3
"""Validate the manifests and the dashboard in deploy/, offline.

    pip install -r deploy/requirements.txt
    python3 deploy/validate.py [DIR]

Checks, for every *.yaml / *.yml file (each may hold several documents):
  * core Kubernetes kinds against the JSON schemas shipped by the
    kubernetes-validate package, in strict mode (unknown fields fail), for the
    oldest Kubernetes version the manifests support and for the newest one the
    package ships;
  * the CRDs used here (cert-manager Certificate, Prometheus Operator
    PrometheusRule and PodMonitor) and kustomization.yaml by hand: apiVersion,
    kind, metadata.name and the required spec fields;
  * a few rules of this project: Pod security settings, probes on portico's
    admin port, no subPath on a Secret mount, a grace period longer than
    portico's drain delay plus drain timeout, Service and PDB selectors that
    match the workload, files listed in kustomization.yaml that exist;
and for dashboard.json: valid JSON, a Grafana dashboard whose panels use the
${DS_PROMETHEUS} data source variable. In every file, each portico_* metric
name must be one of the metrics of the SPEC (../shared/SPEC.md from the repo
root; PORTICO_SPEC overrides), histogram suffixes _bucket/_sum/_count allowed,
and label matchers must use the SPEC's labels.

Prints one line per file and a last line "N passed, M failed"; exits 1 when
any file failed, 2 when it cannot run at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import yaml
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions
except ImportError as e:  # pragma: no cover - depends on the environment
    print(f"validate.py: missing Python package ({e.name}): "
          "pip install -r deploy/requirements.txt", file=sys.stderr)
    sys.exit(2)

# Native sidecars need 1.29 and lifecycle.preStop.sleep 1.30 (beta, on by default).
MIN_K8S_VERSION = os.environ.get("K8S_MIN_VERSION", "1.30")

DEPLOY_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEPLOY_DIR.parent

# Used only when SPEC.md cannot be found: name -> (type, labels).
FALLBACK_METRICS: dict[str, tuple[str, set[str]]] = {
    "portico_requests_total": ("counter", {"route", "code"}),
    "portico_request_duration_seconds": ("histogram", {"route"}),
    "portico_upstream_errors_total": ("counter", {"route", "kind"}),
    "portico_connections_open": ("gauge", set()),
    "portico_connections_total": ("counter", set()),
    "portico_tls_handshakes_total": ("counter", {"result"}),
    "portico_certificate_not_after_seconds": ("gauge", {"name"}),
    "portico_certificate_reloads_total": ("counter", {"result"}),
    "portico_build_info": ("gauge", {"version"}),
}
# Labels Prometheus adds at scrape time, allowed on any metric.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "endpoint"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])portico_[a-z0-9_]+")
DURATION_RE = re.compile(r"^(?:0|(?:\d+(?:\.\d+)?(?:ms|s|m|h))+)$")
PROM_DURATION_RE = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")


class Failure(Exception):
    """One reason a file fails."""


# ---------------------------------------------------------------- SPEC metrics

def load_spec_metrics() -> tuple[dict[str, tuple[str, set[str]]], str]:
    candidates = []
    if os.environ.get("PORTICO_SPEC"):
        candidates.append(Path(os.environ["PORTICO_SPEC"]))
    candidates += [REPO_ROOT.parent / "shared" / "SPEC.md", REPO_ROOT / "SPEC.md",
                   REPO_ROOT / "shared" / "SPEC.md"]
    row = re.compile(r"^\|\s*`(portico_[a-z0-9_]+)`\s*\|\s*([^|]*)\|\s*([^|]*)\|")
    for path in candidates:
        if not path.is_file():
            continue
        metrics = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            m = row.match(line.strip())
            if m:
                # "`result` (`ok`, `failed`)": the label is result, not its values.
                labels = set(re.findall(r"`([a-z_][a-z0-9_]*)`", re.sub(r"\([^)]*\)", "", m.group(3))))
                metrics[m.group(1)] = (m.group(2).strip().split()[0] if m.group(2).strip() else "",
                                       labels)
        if metrics:
            return metrics, str(path)
    return FALLBACK_METRICS, "built-in list (SPEC.md not found)"


def check_metric_names(text: str, metrics: dict[str, tuple[str, set[str]]]) -> list[str]:
    """Return the problems with portico_* names and label matchers in text."""
    problems = []
    for name in sorted(set(METRIC_RE.findall(text))):
        if resolve_metric(name, metrics) is None:
            problems.append(f"metric {name} is not in the SPEC")
    # Label matchers: portico_x{a="b", c=~"d"}.
    for m in re.finditer(r"(?<![A-Za-z0-9_:])(portico_[a-z0-9_]+)\s*\{([^}]*)\}", text):
        base = resolve_metric(m.group(1), metrics)
        if base is None:
            continue
        allowed = metrics[base][1] | TARGET_LABELS
        if m.group(1).endswith("_bucket"):
            allowed = allowed | {"le"}
        for label in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)):
            if label not in allowed:
                problems.append(f"{m.group(1)} has no label {label!r} in the SPEC")
    return problems


def resolve_metric(name: str, metrics: dict[str, tuple[str, set[str]]]) -> str | None:
    if name in metrics:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and base in metrics and metrics[base][0] in ("histogram", "summary", ""):
            return base
    return None


def check_promql(expr: str) -> None:
    """A light syntax check: balanced brackets outside strings, not empty."""
    if not expr.strip():
        raise Failure("empty expression")
    stack, quote, i = [], None, 0
    pairs = {")": "(", "]": "[", "}": "{"}
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            stack.append(c)
        elif c in ")]}":
            if not stack or stack.pop() != pairs[c]:
                raise Failure(f"unbalanced {c!r} in expression: {expr.strip()}")
        i += 1
    if quote or stack:
        raise Failure(f"unclosed {quote or stack[-1]!r} in expression: {expr.strip()}")


# ------------------------------------------------------------- custom resources

def need(cond: bool, msg: str) -> None:
    if not cond:
        raise Failure(msg)


def require_map(obj, what: str) -> dict:
    need(isinstance(obj, dict), f"{what} must be a mapping")
    return obj


def check_unknown_keys(obj: dict, known: set[str], what: str) -> None:
    unknown = sorted(set(obj) - known)
    need(not unknown, f"{what}: unknown field(s) {', '.join(unknown)}")


def check_certificate(doc: dict) -> None:
    need(doc["apiVersion"] == "cert-manager.io/v1", "Certificate: apiVersion must be cert-manager.io/v1")
    spec = require_map(doc.get("spec"), "Certificate spec")
    check_unknown_keys(spec, {
        "secretName", "secretTemplate", "commonName", "dnsNames", "ipAddresses", "uris",
        "emailAddresses", "otherNames", "duration", "renewBefore", "renewBeforePercentage",
        "issuerRef", "privateKey", "usages", "isCA", "subject", "literalSubject", "keystores",
        "revisionHistoryLimit", "encodeUsagesInRequest", "nameConstraints", "additionalOutputFormats",
        "signatureAlgorithm"}, "Certificate spec")
    need(isinstance(spec.get("secretName"), str) and spec["secretName"], "Certificate: spec.secretName is required")
    issuer = require_map(spec.get("issuerRef"), "Certificate spec.issuerRef")
    need(isinstance(issuer.get("name"), str) and issuer["name"], "Certificate: spec.issuerRef.name is required")
    need(issuer.get("kind", "Issuer") in ("Issuer", "ClusterIssuer") or issuer.get("group", "cert-manager.io") != "cert-manager.io",
         "Certificate: spec.issuerRef.kind must be Issuer or ClusterIssuer")
    names = [spec.get(k) for k in ("commonName", "dnsNames", "ipAddresses", "uris", "emailAddresses")]
    need(any(names), "Certificate: needs at least one of commonName, dnsNames, ipAddresses, uris")
    for key in ("dnsNames", "ipAddresses", "uris", "usages"):
        if key in spec:
            need(isinstance(spec[key], list) and all(isinstance(x, str) for x in spec[key]),
                 f"Certificate: spec.{key} must be a list of strings")
    for key in ("duration", "renewBefore"):
        if key in spec:
            need(isinstance(spec[key], str) and re.fullmatch(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", spec[key]),
                 f"Certificate: spec.{key} must be a Go duration such as 2160h")
    pk = spec.get("privateKey") or {}
    require_map(pk, "Certificate spec.privateKey")
    check_unknown_keys(pk, {"algorithm", "size", "encoding", "rotationPolicy"}, "Certificate spec.privateKey")
    algorithm = pk.get("algorithm", "RSA")
    sizes = {"RSA": {2048, 3072, 4096, 8192}, "ECDSA": {256, 384, 521}, "Ed25519": {None}}
    need(algorithm in sizes, "Certificate: privateKey.algorithm must be RSA, ECDSA or Ed25519")
    need(pk.get("size") in sizes[algorithm] or (pk.get("size") is None and algorithm != "Ed25519"),
         f"Certificate: privateKey.size {pk.get('size')} does not fit {algorithm}")
    need(pk.get("rotationPolicy", "Always") in ("Always", "Never"), "Certificate: privateKey.rotationPolicy must be Always or Never")
    need(pk.get("encoding", "PKCS1") in ("PKCS1", "PKCS8"), "Certificate: privateKey.encoding must be PKCS1 or PKCS8")


def check_prometheus_rule(doc: dict) -> None:
    need(doc["apiVersion"] == "monitoring.coreos.com/v1", "PrometheusRule: apiVersion must be monitoring.coreos.com/v1")
    spec = require_map(doc.get("spec"), "PrometheusRule spec")
    check_unknown_keys(spec, {"groups"}, "PrometheusRule spec")
    groups = spec.get("groups")
    need(isinstance(groups, list) and groups, "PrometheusRule: spec.groups must be a non-empty list")
    seen_groups = set()
    for g in groups:
        require_map(g, "PrometheusRule group")
        check_unknown_keys(g, {"name", "interval", "rules", "partial_response_strategy", "limit",
                               "query_offset", "labels"}, "PrometheusRule group")
        need(isinstance(g.get("name"), str) and g["name"], "PrometheusRule: every group needs a name")
        need(g["name"] not in seen_groups, f"PrometheusRule: group {g['name']} appears twice")
        seen_groups.add(g["name"])
        rules = g.get("rules")
        need(isinstance(rules, list) and rules, f"PrometheusRule group {g['name']}: rules must be a non-empty list")
        for r in rules:
            require_map(r, "PrometheusRule rule")
            check_unknown_keys(r, {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"},
                               f"PrometheusRule group {g['name']} rule")
            need(("alert" in r) != ("record" in r), f"PrometheusRule group {g['name']}: a rule needs alert or record, not both")
            label = r.get("alert") or r.get("record")
            need(isinstance(r.get("expr"), (str, int)), f"rule {label}: expr is required")
            check_promql(str(r["expr"]))
            for key in ("for", "keep_firing_for"):
                if key in r:
                    need(isinstance(r[key], str) and PROM_DURATION_RE.match(r[key]), f"rule {label}: {key} must be a duration like 10m")
            for key in ("labels", "annotations"):
                if key in r:
                    need(isinstance(r[key], dict) and all(isinstance(v, str) for v in r[key].values()),
                         f"rule {label}: {key} values must be strings")
            if "alert" in r:
                need("severity" in (r.get("labels") or {}), f"alert {label}: labels.severity is required")
                need("summary" in (r.get("annotations") or {}), f"alert {label}: annotations.summary is required")


def check_pod_monitor(doc: dict) -> None:
    need(doc["apiVersion"] == "monitoring.coreos.com/v1", "PodMonitor: apiVersion must be monitoring.coreos.com/v1")
    spec = require_map(doc.get("spec"), "PodMonitor spec")
    require_map(spec.get("selector"), "PodMonitor spec.selector")
    eps = spec.get("podMetricsEndpoints")
    need(isinstance(eps, list) and eps, "PodMonitor: spec.podMetricsEndpoints must be a non-empty list")
    for ep in eps:
        require_map(ep, "PodMonitor endpoint")
        need("port" in ep or "portNumber" in ep or "targetPort" in ep, "PodMonitor: every endpoint needs a port")
        if "interval" in ep:
            need(PROM_DURATION_RE.match(str(ep["interval"])), "PodMonitor: interval must be a duration like 30s")


CUSTOM_KINDS = {
    ("cert-manager.io", "Certificate"): check_certificate,
    ("monitoring.coreos.com", "PrometheusRule"): check_prometheus_rule,
    ("monitoring.coreos.com", "PodMonitor"): check_pod_monitor,
}


# --------------------------------------------------------- project's own rules

def parse_duration(text: str) -> float:
    need(DURATION_RE.match(text) is not None, f"bad duration {text!r}")
    if text == "0":
        return 0.0
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def option_value(container: dict, option: str) -> str | None:
    """The value of --option from args (both --x=v and --x v) or PORTICO_X env."""
    args = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    for i, a in enumerate(args):
        if a.startswith(f"--{option}="):
            return a.split("=", 1)[1]
        if a == f"--{option}" and i + 1 < len(args):
            return args[i + 1]
    env_name = "PORTICO_" + option.upper().replace("-", "_")
    for e in container.get("env") or []:
        if e.get("name") == env_name and "value" in e:
            return str(e["value"])
    return None


def probe_path(probe: dict | None) -> str | None:
    return ((probe or {}).get("httpGet") or {}).get("path")


def check_pod_spec(spec: dict, where: str) -> None:
    psc = spec.get("securityContext") or {}
    containers = spec.get("containers") or []
    inits = spec.get("initContainers") or []
    secret_volumes = {v["name"] for v in spec.get("volumes") or [] if "secret" in v}
    porticos = []
    for c in containers + inits:
        name = f"{where} container {c.get('name')}"
        csc = c.get("securityContext") or {}
        need(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{name}: runAsNonRoot must be true")
        need(csc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation must be false")
        need(csc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem must be true")
        need("ALL" in ((csc.get("capabilities") or {}).get("drop") or []), f"{name}: capabilities must drop ALL")
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        need(seccomp in ("RuntimeDefault", "Localhost"), f"{name}: seccompProfile must be RuntimeDefault")
        for m in c.get("volumeMounts") or []:
            need(not (m.get("name") in secret_volumes and (m.get("subPath") or m.get("subPathExpr"))),
                 f"{name}: Secret volume {m.get('name')} mounted with subPath: the kubelet never updates "
                 "subPath mounts, so certificate rotation would not work")
        if "portico" in str(c.get("image", "")).split("/")[-1]:
            porticos.append(c)
    need(porticos, f"{where}: no portico container")
    for c in porticos:
        name = f"{where} container {c.get('name')}"
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        need(ports.get("https") == 8443, f"{name}: needs containerPort 8443 named https")
        need(ports.get("admin") == 9901, f"{name}: needs containerPort 9901 named admin")
        need(probe_path(c.get("livenessProbe")) == "/healthz", f"{name}: livenessProbe must GET /healthz")
        need(probe_path(c.get("readinessProbe")) == "/readyz", f"{name}: readinessProbe must GET /readyz")
        if c in inits:
            need(c.get("restartPolicy") == "Always", f"{name}: an init container portico must be a native sidecar (restartPolicy: Always)")
            # /readyz needs the upstream, which starts only after this probe passes.
            need(probe_path(c.get("startupProbe")) != "/readyz",
                 f"{name}: a sidecar's startupProbe must not use /readyz (the primary starts only after it passes)")
        delay = parse_duration(option_value(c, "drain-delay") or "0s")
        timeout = parse_duration(option_value(c, "drain-timeout") or "30s")
        grace = spec.get("terminationGracePeriodSeconds", 30)
        need(grace > delay + timeout,
             f"{where}: terminationGracePeriodSeconds {grace} must exceed drain delay + timeout ({delay + timeout:g}s)")


def workload_pods(docs: list[dict]) -> list[tuple[dict, dict]]:
    """(labels, pod spec) for every Pod and Deployment-like document."""
    out = []
    for d in docs:
        if d.get("kind") == "Pod":
            out.append(((d.get("metadata") or {}).get("labels") or {}, d.get("spec") or {}))
        elif d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
            tpl = (d.get("spec") or {}).get("template") or {}
            out.append(((tpl.get("metadata") or {}).get("labels") or {}, tpl.get("spec") or {}))
    return out


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_project_rules(doc: dict, all_docs: list[dict], where: str) -> None:
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        check_pod_spec(spec, where)
    elif kind == "Deployment":
        tpl = spec.get("template") or {}
        labels = (tpl.get("metadata") or {}).get("labels") or {}
        need(selects((spec.get("selector") or {}).get("matchLabels") or {}, labels),
             f"{where}: spec.selector.matchLabels does not match the template's labels")
        check_pod_spec(tpl.get("spec") or {}, where)
    elif kind == "Service":
        pods = [(l, s) for l, s in workload_pods(all_docs) if selects(spec.get("selector") or {}, l)]
        need(pods, f"{where}: the selector matches no workload in this folder")
        for _, pod in pods:
            names = {p.get("name") for c in (pod.get("containers") or []) + (pod.get("initContainers") or [])
                     for p in c.get("ports") or []}
            for p in spec.get("ports") or []:
                tp = p.get("targetPort")
                need(not isinstance(tp, str) or tp in names, f"{where}: targetPort {tp} is no container port name")
                need(tp != "admin" and p.get("port") != 9901,
                     f"{where}: do not expose the admin port (POST /shutdown has no authentication)")
    elif kind == "PodDisruptionBudget":
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        need(any(selects(sel, l) for l, _ in workload_pods(all_docs)), f"{where}: the selector matches no workload in this folder")


# ------------------------------------------------------------------ the files

def validate_core(doc: dict, versions: list[str]) -> None:
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            raise Failure(f"{doc['kind']}/{doc['metadata']['name']} against Kubernetes {version}: {path}: {e.message}")


def check_kustomization(doc: dict, path: Path, docs_by_file: dict[Path, list[dict]]) -> str:
    need(doc.get("apiVersion") in ("kustomize.config.k8s.io/v1beta1", "kustomize.config.k8s.io/v1"),
         "Kustomization: apiVersion must be kustomize.config.k8s.io/v1beta1")
    resources = doc.get("resources")
    need(isinstance(resources, list) and resources, "Kustomization: resources must be a non-empty list")
    seen = {}
    for r in resources:
        target = path.parent / r
        need(target.exists(), f"Kustomization: resource {r} does not exist")
        need(r not in seen, f"Kustomization: resource {r} listed twice")
        seen[r] = True
        for d in docs_by_file.get(target.resolve(), []):
            key = (d.get("kind"), (d.get("metadata") or {}).get("name"))
            need(key not in seen, f"Kustomization: {key[0]}/{key[1]} comes from two files ({r})")
            seen[key] = True
    note = ""
    kubectl = shutil.which("kubectl")
    if kubectl:
        try:
            run = subprocess.run([kubectl, "kustomize", str(path.parent)], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Failure(f"kubectl kustomize could not run: {e}")
        need(run.returncode == 0, f"kubectl kustomize failed: {run.stderr.strip()}")
        note = ", kubectl kustomize builds"
    return f"{len(resources)} resources exist{note}"


def check_dashboard(path: Path) -> str:
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise Failure(f"not valid JSON: {e}")
    require_map(dash, "dashboard")
    need(isinstance(dash.get("title"), str) and dash["title"], "dashboard: title is required")
    need(isinstance(dash.get("schemaVersion"), int), "dashboard: schemaVersion must be an integer")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    ds_var = variables.get("DS_PROMETHEUS")
    need(ds_var is not None and ds_var.get("type") == "datasource" and ds_var.get("query") == "prometheus",
         "dashboard: needs a templating variable DS_PROMETHEUS of type datasource (prometheus)")
    panels, stack = [], list(dash.get("panels") or [])
    while stack:
        p = stack.pop(0)
        panels.append(p)
        stack.extend(p.get("panels") or [])
    need(panels, "dashboard: no panels")
    ids = [p.get("id") for p in panels]
    need(len(ids) == len(set(ids)) and None not in ids, "dashboard: every panel needs a unique id")
    queries = 0
    for p in panels:
        title = p.get("title", p.get("id"))
        gp = p.get("gridPos") or {}
        need(all(isinstance(gp.get(k), int) for k in "hwxy") and gp["x"] + gp["w"] <= 24,
             f"panel {title}: gridPos needs integer h, w, x, y within 24 columns")
        if p.get("type") == "row":
            continue
        need((p.get("datasource") or {}).get("uid") == "${DS_PROMETHEUS}", f"panel {title}: datasource must be ${{DS_PROMETHEUS}}")
        targets = p.get("targets") or []
        need(targets, f"panel {title}: no queries")
        for t in targets:
            need((t.get("datasource") or {}).get("uid", "${DS_PROMETHEUS}") == "${DS_PROMETHEUS}",
                 f"panel {title}: query datasource must be ${{DS_PROMETHEUS}}")
            need(isinstance(t.get("expr"), str), f"panel {title}: a query has no expr")
            try:
                check_promql(t["expr"])
            except Failure as e:
                raise Failure(f"panel {title}: {e}")
            queries += 1
    return f"{len(panels)} panels, {queries} queries"


def load_yaml_docs(path: Path) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except yaml.YAMLError as e:
        raise Failure(f"not valid YAML: {e}")
    need(docs, "no documents")
    for d in docs:
        need(isinstance(d, dict), "a document is not a mapping")
    return docs


def main(argv: list[str]) -> int:
    directory = Path(argv[1]).resolve() if len(argv) > 1 else DEPLOY_DIR
    metrics, spec_source = load_spec_metrics()
    shipped = all_versions()
    older = [v for v in shipped if tuple(map(int, v.split(".")[:2])) <= tuple(map(int, MIN_K8S_VERSION.split(".")[:2]))]
    if not older:
        print(f"validate.py: kubernetes-validate {kubernetes_validate.__version__} ships no schema for "
              f"Kubernetes {MIN_K8S_VERSION} or older (it has {shipped[0]}..{shipped[-1]}): pin the version "
              "in deploy/requirements.txt", file=sys.stderr)
        return 2
    versions = sorted({MIN_K8S_VERSION, ".".join(shipped[-1].split(".")[:2])},
                      key=lambda v: tuple(map(int, v.split("."))))
    print(f"using kubernetes-validate {kubernetes_validate.__version__} (Kubernetes {', '.join(versions)}, strict); "
          f"metrics from {spec_source}")

    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))
    docs_by_file: dict[Path, list[dict]] = {}
    for f in files:
        if f.suffix != ".json":
            try:
                docs_by_file[f.resolve()] = load_yaml_docs(f)
            except Failure:
                pass  # reported below
    all_docs = [d for docs in docs_by_file.values() for d in docs]

    passed = failed = 0
    for f in files:
        rel = os.path.relpath(f, Path.cwd())
        try:
            if f.suffix == ".json":
                summary = check_dashboard(f)
            else:
                docs = load_yaml_docs(f)
                parts = []
                for doc in docs:
                    kind, api = doc.get("kind"), doc.get("apiVersion")
                    need(isinstance(kind, str) and isinstance(api, str), "a document needs apiVersion and kind")
                    if kind == "Kustomization":
                        parts.append(check_kustomization(doc, f, docs_by_file))
                        continue
                    meta = require_map(doc.get("metadata"), f"{kind}: metadata")
                    need(isinstance(meta.get("name"), str) and meta["name"], f"{kind}: metadata.name is required")
                    where = f"{kind}/{meta['name']}"
                    group = api.split("/")[0] if "/" in api else ""
                    custom = CUSTOM_KINDS.get((group, kind))
                    if custom:
                        custom(doc)
                        parts.append(f"{where} (checked by hand)")
                        continue
                    try:
                        validate_core(doc, versions)
                    except kubernetes_validate.SchemaNotFoundError:
                        raise Failure(f"{where}: no schema for {api} {kind} and no hand check")
                    check_project_rules(doc, all_docs, where)
                    parts.append(where)
                summary = ", ".join(parts)
            problems = check_metric_names(f.read_text(encoding="utf-8"), metrics)
            need(not problems, "; ".join(problems))
        except Failure as e:
            failed += 1
            print(f"FAIL {rel}: {' '.join(str(e).split())}")
        else:
            passed += 1
            print(f"ok   {rel}: {summary}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
