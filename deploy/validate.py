#!/usr/bin/env python3
"""Validate the manifests and the dashboard in deploy/, offline.

    pip install -r deploy/requirements.txt
    python3 deploy/validate.py [DIR]

Two passes over DIR (deploy/ by default):

Files: every *.yaml / *.yml / *.json in DIR and in each DIR/components/*/
(each YAML file may hold several documents):
  * core Kubernetes kinds against the JSON schemas shipped by the
    kubernetes-validate package, in strict mode (unknown fields fail), for the
    oldest Kubernetes version the manifests support and for the newest one the
    package ships;
  * the CRDs used here (cert-manager Certificate, Prometheus Operator
    PrometheusRule and PodMonitor), kustomization.yaml and each component's
    kustomization.yaml by hand: apiVersion, kind, the required fields, and
    every file they name exists; a component's patch files are partial objects
    and are checked in the renders instead;
  * a few rules of this project: Pod security settings, probes on portico's
    admin port, no subPath on a Secret mount, a grace period longer than
    portico's drain delay plus drain timeout, Service, PDB and NetworkPolicy
    selectors that match the workload, the admin port never exposed;
  * dashboard.json: valid JSON, a Grafana dashboard whose panels use the
    ${DS_PROMETHEUS} data source variable.

Renders: the base (DIR/kustomization.yaml) with every combination of the
components in DIR/components/*/, each built with `kubectl kustomize` from an
overlay in a temporary copy, and every object of the result checked as above
(add-portico is rendered over a small sample app of its own, since it adds
portico to a Deployment the user names). Without kubectl the renders are
skipped with a SKIP line, and fail under CI=true.

In every file and render, each portico_* metric name must be one of the metrics
in docs/reference.md (PORTICO_SPEC names another file with the same table),
histogram suffixes _bucket/_sum/_count allowed, and label matchers must use its
labels.

Prints one line per file and per render and a last line "N passed, M failed";
exits 1 when any failed, 2 when it cannot run at all.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
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

# Used only when docs/reference.md cannot be found: name -> (type, labels).
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


# ------------------------------------------------------------------ metrics

def load_spec_metrics() -> tuple[dict[str, tuple[str, set[str]]], str]:
    candidates = []
    if os.environ.get("PORTICO_SPEC"):
        candidates.append(Path(os.environ["PORTICO_SPEC"]))
    candidates.append(REPO_ROOT / "docs" / "reference.md")
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
    return FALLBACK_METRICS, "built-in list (docs/reference.md not found)"


def check_metric_names(text: str, metrics: dict[str, tuple[str, set[str]]]) -> list[str]:
    """Return the problems with portico_* names and label matchers in text."""
    problems = []
    for name in sorted(set(METRIC_RE.findall(text))):
        if resolve_metric(name, metrics) is None:
            problems.append(f"metric {name} is not in docs/reference.md")
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
                problems.append(f"{m.group(1)} has no label {label!r} in docs/reference.md")
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
    elif kind == "NetworkPolicy":
        sel = (spec.get("podSelector") or {}).get("matchLabels") or {}
        need(any(selects(sel, l) for l, _ in workload_pods(all_docs)), f"{where}: the podSelector matches no workload in this folder")
        need("Ingress" in (spec.get("policyTypes") or []), f"{where}: policyTypes must include Ingress")
        rules = spec.get("ingress") or []
        need(any(p.get("port") in ("https", 8443) and not r.get("from") for r in rules for p in r.get("ports") or []),
             f"{where}: the TLS port (https) must be open to every peer")
        for r in rules:
            ports = [p.get("port") for p in r.get("ports") or []]
            need(ports, f"{where}: an ingress rule without ports opens every port, the admin port too")
            need(not (set(ports) & {"admin", 9901}) or r.get("from"),
                 f"{where}: the admin port (POST /shutdown, no authentication) must not be open to every peer")


# ------------------------------------------------------------------ the files

def validate_core(doc: dict, versions: list[str]) -> None:
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            raise Failure(f"{doc['kind']}/{doc['metadata']['name']} against Kubernetes {version}: {path}: {e.message}")


KUSTOMIZE_API = ("kustomize.config.k8s.io/v1beta1", "kustomize.config.k8s.io/v1")
COMPONENT_API = "kustomize.config.k8s.io/v1alpha1"


def kustomization_files(doc: dict) -> tuple[list[str], list[str]]:
    """(resources, other files: patches, generator inputs) a kustomization names."""
    resources = list(doc.get("resources") or [])
    others = [p["path"] for p in doc.get("patches") or [] if isinstance(p, dict) and "path" in p]
    for gen in (doc.get("configMapGenerator") or []) + (doc.get("secretGenerator") or []):
        for f in gen.get("files") or []:
            others.append(str(f).split("=", 1)[-1])
    return resources, others


def check_kustomization(doc: dict, path: Path, docs_by_file: dict[Path, list[dict]]) -> str:
    """A Kustomization (the base) or a Component, checked by hand."""
    kind = doc.get("kind")
    if kind == "Component":
        need(doc.get("apiVersion") == COMPONENT_API, f"Component: apiVersion must be {COMPONENT_API}")
    else:
        need(doc.get("apiVersion") in KUSTOMIZE_API, f"Kustomization: apiVersion must be {KUSTOMIZE_API[0]}")
    resources, others = kustomization_files(doc)
    if kind == "Kustomization":
        need(resources, "Kustomization: resources must be a non-empty list")
    else:
        need(resources or others or doc.get("patches"), "Component: it adds or patches nothing")
    for p in doc.get("patches") or []:
        need(isinstance(p, dict) and ("path" in p) != ("patch" in p), f"{kind}: a patch needs path or patch, not both")
    seen = {}
    for r in resources:
        target = path.parent / r
        need(target.exists(), f"{kind}: resource {r} does not exist")
        need(r not in seen, f"{kind}: resource {r} listed twice")
        seen[r] = True
        for d in docs_by_file.get(target.resolve(), []):
            key = (d.get("kind"), (d.get("metadata") or {}).get("name"))
            need(key not in seen, f"{kind}: {key[0]}/{key[1]} comes from two files ({r})")
            seen[key] = True
    for f in others:
        need((path.parent / f).is_file(), f"{kind}: file {f} does not exist")
    for c in doc.get("components") or []:
        need((path.parent / c / "kustomization.yaml").is_file(), f"{kind}: component {c} has no kustomization.yaml")
    return f"{kind}: {len(resources)} resources, {len(doc.get('patches') or [])} patches, files exist"


def check_dashboard(text: str) -> str:
    try:
        dash = json.loads(text)
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


def parse_yaml_docs(text: str) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise Failure(f"not valid YAML: {e}")
    need(docs, "no documents")
    for d in docs:
        need(isinstance(d, dict), "a document is not a mapping")
    return docs


def load_yaml_docs(path: Path) -> list[dict]:
    return parse_yaml_docs(path.read_text(encoding="utf-8"))


def check_object(doc: dict, all_docs: list[dict], versions: list[str]) -> str:
    """One Kubernetes object: schema (or hand check) and the project's rules."""
    kind, api = doc.get("kind"), doc.get("apiVersion")
    need(isinstance(kind, str) and isinstance(api, str), "a document needs apiVersion and kind")
    meta = require_map(doc.get("metadata"), f"{kind}: metadata")
    need(isinstance(meta.get("name"), str) and meta["name"], f"{kind}: metadata.name is required")
    where = f"{kind}/{meta['name']}"
    group = api.split("/")[0] if "/" in api else ""
    custom = CUSTOM_KINDS.get((group, kind))
    if custom:
        custom(doc)
        return f"{where} (checked by hand)"
    try:
        validate_core(doc, versions)
    except kubernetes_validate.SchemaNotFoundError:
        raise Failure(f"{where}: no schema for {api} {kind} and no hand check")
    check_project_rules(doc, all_docs, where)
    if kind == "ConfigMap" and ((meta.get("labels") or {}).get("grafana_dashboard")):
        for key, value in (doc.get("data") or {}).items():
            try:
                check_dashboard(value)
            except Failure as e:
                raise Failure(f"{where} {key}: {e}")
    return where


# ------------------------------------------------------------------ renders

# The app that add-portico is rendered over: a Deployment and Service of a user's,
# named as the component's targets, with the security settings this project's
# rules ask of every container.
SAMPLE_APP = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: my-app
spec:
  selector:
    matchLabels:
      app.kubernetes.io/name: my-app
  template:
    metadata:
      labels:
        app.kubernetes.io/name: my-app
    spec:
      securityContext:
        runAsNonRoot: true
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: web
          image: registry.example.com/my-app:1.0
          args: ["--listen=127.0.0.1:8080"]
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
---
apiVersion: v1
kind: Service
metadata:
  name: my-app
spec:
  selector:
    app.kubernetes.io/name: my-app
  ports:
    - name: web
      port: 443
      targetPort: 8080
"""
# Components that add portico to the user's Deployment rather than change the base's.
NEEDS_SAMPLE_APP = {"add-portico"}


def component_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in (directory / "components").glob("*/") if (p / "kustomization.yaml").is_file())


def render_all(directory: Path, components: list[Path], metrics, versions: list[str]) -> tuple[int, int]:
    """Builds the base with every combination of components; (passed, failed)."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            print("FAIL renders: kubectl not found, and CI=true needs every render checked "
                  "(kubectl kustomize builds the base and its components)")
            return 0, 1
        print("SKIP renders: kubectl not found; the base and its components were not built")
        return 0, 0
    passed = failed = 0
    names = [c.name for c in components]
    with tempfile.TemporaryDirectory(prefix="portico-validate-") as tmp:
        # kustomize loads only relative paths below an overlay's parent: copy.
        shutil.copytree(directory, Path(tmp) / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
        for n in range(len(names) + 1):
            for combo in itertools.combinations(names, n):
                label = " + ".join(("base",) + combo)
                overlay = Path(tmp) / f"overlay-{passed + failed}"
                overlay.mkdir()
                resources = ["../deploy"]
                if set(combo) & NEEDS_SAMPLE_APP:
                    (overlay / "sample-app.yaml").write_text(SAMPLE_APP, encoding="utf-8")
                    resources.append("sample-app.yaml")
                (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
                    "apiVersion": KUSTOMIZE_API[0], "kind": "Kustomization", "resources": resources,
                    "components": [f"../deploy/components/{c}" for c in combo]}), encoding="utf-8")
                try:
                    try:
                        run = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True,
                                             text=True, timeout=120)
                    except (OSError, subprocess.TimeoutExpired) as e:
                        raise Failure(f"kubectl kustomize could not run: {e}")
                    need(run.returncode == 0, f"kubectl kustomize failed: {run.stderr.strip()}")
                    docs = parse_yaml_docs(run.stdout)
                    keys = [(d.get("kind"), (d.get("metadata") or {}).get("name")) for d in docs]
                    need(len(keys) == len(set(keys)), f"an object comes twice: {keys}")
                    for d in docs:
                        check_object(d, docs, versions)
                    problems = check_metric_names(run.stdout, metrics)
                    need(not problems, "; ".join(problems))
                except Failure as e:
                    failed += 1
                    print(f"FAIL render {label}: {' '.join(str(e).split())}")
                else:
                    passed += 1
                    print(f"ok   render {label}: {len(docs)} objects")
    return passed, failed


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

    components = component_dirs(directory)
    folders = [directory] + components
    files = [p for folder in folders for p in sorted(folder.iterdir())
             if p.is_file() and p.suffix in (".yaml", ".yml", ".json")]
    docs_by_file: dict[Path, list[dict]] = {}
    for f in files:
        if f.suffix != ".json":
            try:
                docs_by_file[f.resolve()] = load_yaml_docs(f)
            except Failure:
                pass  # reported below
    # A component's patches are partial objects: the renders check what they make.
    patches: set[Path] = set()
    for c in components:
        for doc in docs_by_file.get((c / "kustomization.yaml").resolve(), []):
            patches.update((c / p["path"]).resolve() for p in doc.get("patches") or []
                           if isinstance(p, dict) and "path" in p)
    all_docs = [d for f, docs in docs_by_file.items() if f not in patches for d in docs
                if d.get("kind") not in ("Kustomization", "Component")]

    passed = failed = 0
    for f in files:
        rel = os.path.relpath(f, Path.cwd())
        try:
            if f.suffix == ".json":
                summary = check_dashboard(f.read_text(encoding="utf-8"))
            elif f.resolve() in patches:
                load_yaml_docs(f)
                summary = "a patch (checked in the renders)"
            else:
                parts = []
                for doc in load_yaml_docs(f):
                    if doc.get("kind") in ("Kustomization", "Component"):
                        parts.append(check_kustomization(doc, f, docs_by_file))
                    else:
                        parts.append(check_object(doc, all_docs, versions))
                summary = ", ".join(parts)
            problems = check_metric_names(f.read_text(encoding="utf-8"), metrics)
            need(not problems, "; ".join(problems))
        except Failure as e:
            failed += 1
            print(f"FAIL {rel}: {' '.join(str(e).split())}")
        else:
            passed += 1
            print(f"ok   {rel}: {summary}")

    p, f = render_all(directory, components, metrics, versions)
    passed, failed = passed + p, failed + f
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
