"""Render and lint charts/ordo with Helm's own engine (helm-python-sdk), print JSON.

Output: {"lint": {...}, "renders": {"<case>": {"<template path>": "<manifest>"}},
         "schema_rejects": {"<case>": "<error>"}}. The Rust test (operator/tests/chart.rs)
parses every rendered object into its k8s-openapi type and checks RBAC against the code.
"""
import json
import sys

import helm_python as helm

chart_dir = sys.argv[1]
chart = helm.Chart.load(chart_dir)

cases = {
    "default": {},
    "ha-custom": {
        "replicaCount": 2,
        "image": {"repository": "registry.example/ordo-operator", "tag": "1.2.3", "pullPolicy": "Always"},
        "serviceAccount": {"create": True, "name": "ordo-op", "annotations": {"a": "b"}},
        "logFormat": "text",
        "adminPort": 9090,
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "podLabels": {"team": "platform"},
    },
    "existing-sa": {"serviceAccount": {"create": False, "name": "prebuilt"}},
}
renders = {}
for name, values in cases.items():
    renders[name] = chart.render(values, name="ordo", namespace="ordo-system", is_install=True)

bad_values = {
    "replicas-zero": {"replicaCount": 0},
    "bad-log-format": {"logFormat": "xml"},
    "unknown-key": {"replicas": 3},
    "bad-pull-policy": {"image": {"repository": "x", "pullPolicy": "Sometimes"}},
}
schema_rejects = {}
for name, values in bad_values.items():
    try:
        chart.render(values, name="ordo", namespace="ordo-system", is_install=True)
        schema_rejects[name] = None
    except helm.HelmError as e:  # values.schema.json must reject these
        schema_rejects[name] = str(e)

lint = helm.lint(chart_dir, strict=True, namespace="ordo-system", kube_version="v1.31.0")
crds = chart.crds
json.dump({"lint": lint, "renders": renders, "schema_rejects": schema_rejects, "crds": crds}, sys.stdout)
