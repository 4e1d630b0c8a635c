#!/usr/bin/env python3
"""Validate a manifest stream (stdin) offline, as deploy/validate.py does.

    python3 tests/it/inject/check.py < manifests.yaml

Every document of a kind Kubernetes ships (Deployment, Service, ...) is
checked against the JSON schemas of the kubernetes-validate package in strict
mode (unknown fields fail) for Kubernetes 1.30 and for the newest version the
package ships, the versions deploy/validate.py uses. Other kinds (custom
resources) are listed as not validated. The stream is read with PyYAML, a
YAML 1.1 reader like kubectl's, and printed back as JSON for the Rust test to
inspect:

    {"docs": [...], "validated": ["Deployment/web", ...], "versions": [...],
     "not_validated": ["Certificate/web", ...]}

Exits 1 naming the document and field when one does not validate, 2 when a
package is missing (pip install -r deploy/requirements.txt).
"""

import json
import sys

try:
    import yaml
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions
except ImportError as e:
    print(f"check.py: missing Python package ({e.name}): pip install -r deploy/requirements.txt",
          file=sys.stderr)
    sys.exit(2)

MIN_K8S_VERSION = "1.30"


def main() -> int:
    newest = ".".join(all_versions()[-1].split(".")[:2])
    versions = [MIN_K8S_VERSION] if newest == MIN_K8S_VERSION else [MIN_K8S_VERSION, newest]
    try:
        docs = [d for d in yaml.safe_load_all(sys.stdin.read()) if d is not None]
    except yaml.YAMLError as e:
        print(f"not valid YAML: {e}", file=sys.stderr)
        return 1
    validated, not_validated = [], []
    for i, doc in enumerate(docs, 1):
        if not isinstance(doc, dict):
            print(f"document {i} is not a mapping", file=sys.stderr)
            return 1
        items = doc.get("items") if doc.get("kind") == "List" else None
        for obj in (items if isinstance(items, list) else [doc]):
            where = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
            try:
                for version in versions:
                    kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                not_validated.append(where)
                continue
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(top)"
                print(f"document {i} {where} against Kubernetes {version}: {path}: {e.message}",
                      file=sys.stderr)
                return 1
            validated.append(where)
    json.dump({"docs": docs, "validated": validated, "not_validated": not_validated,
               "versions": versions}, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
