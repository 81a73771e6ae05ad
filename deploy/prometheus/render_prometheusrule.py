"""Write deploy/kubernetes/prometheusrule.yaml from deploy/prometheus/ddsync-rules.yml.

The Prometheus Operator loads rules from PrometheusRule resources; this wraps the rule file's
groups, unchanged, in one. Run it after editing ddsync-rules.yml (needs PyYAML):

    python deploy/prometheus/render_prometheusrule.py          # rewrite the resource
    python deploy/prometheus/render_prometheusrule.py --check  # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "ddsync-rules.yml"
RESOURCE = HERE.parent / "kubernetes" / "prometheusrule.yaml"
SELECTOR_LABELS = {"app.kubernetes.io/name": "ddsync"}
# The label a Prometheus Operator install selects rules (and ServiceMonitors) on: a
# kube-prometheus-stack Helm release named `prometheus` selects `release: prometheus`.
OPERATOR_LABELS = {"release": "prometheus"}

HEADER = """\
# Prometheus Operator form of deploy/prometheus/ddsync-rules.yml: the same groups, wrapped in a
# PrometheusRule. Generated: edit ddsync-rules.yml, then run
#   python deploy/prometheus/render_prometheusrule.py
# (tests fail while the two differ). `release: prometheus` is what kube-prometheus-stack's
# ruleSelector matches for a Helm release named `prometheus`: see deploy/README.md to change it.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def render() -> str:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "ddsync", "labels": {**SELECTOR_LABELS, **OPERATOR_LABELS}},
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.dump(resource, Dumper=_Dumper, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = RESOURCE.read_text(encoding="utf-8") if RESOURCE.exists() else ""
        if current != text:
            print(f"{RESOURCE} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    RESOURCE.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
