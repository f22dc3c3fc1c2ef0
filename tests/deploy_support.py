"""What the deploy/ tests share: the committed Grafana dashboard and the metric names its queries read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "schedctl.json"
# a metric name in PromQL: SGLang's (sglang:x, or the pattern sglang[:_]x matching both spellings: see
# engine_adapter/sglang/prometheus.py) or the sidecar's (schedctl_x)
METRIC = re.compile(r"\b(sglang(?::|\[:_\])[A-Za-z0-9_:]+|schedctl_[A-Za-z0-9_]+)")


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def expressions(board: dict[str, Any] | None = None) -> list[str]:
    """Every PromQL expression of the dashboard: the panels' targets and the query variables."""
    board = board if board is not None else dashboard()
    exprs = [t["expr"] for p in board.get("panels", []) for t in p.get("targets", []) if "expr" in t]
    exprs += [v["query"] for v in board.get("templating", {}).get("list", []) if v.get("type") == "query"]
    return exprs


def dashboard_metric_names(board: dict[str, Any] | None = None) -> set[str]:
    """The metric names the dashboard reads, SGLang's spelt as SGLang names them (sglang:x)."""
    return {m.replace("sglang[:_]", "sglang:") for e in expressions(board) for m in METRIC.findall(e)}


def stored_as(name: str, names: set[str]) -> bool:
    """Whether a Prometheus holding ``names`` has the series ``name`` (sglang:x stored as sglang:x or sglang_x)."""
    return name in names or name.replace("sglang:", "sglang_", 1) in names


# -- the kustomization, rendered with the few kustomize features it uses ------------------------------------------
KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
# the kustomization fields render() applies; any other field fails the tests (this is no kustomize clone: a field
# added to kustomization.yaml needs its semantics added here, with a test)
KNOWN_FIELDS = {"apiVersion", "kind", "resources", "replicas", "images", "configMapGenerator", "generatorOptions"}


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def env_file(path: Path) -> dict[str, str]:
    """A kustomize ``envs`` file: KEY=VALUE lines; blank lines and # comments skipped."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: {line!r} is not KEY=VALUE"
            out[key.strip()] = value
    return out


def render(directory: Path = KUSTOMIZE_DIR) -> list[dict[str, Any]]:
    """What `kubectl apply -k DIRECTORY` applies: the resources, with the replica counts and images set, and the
    generated ConfigMaps (names without a hash suffix: generatorOptions.disableNameSuffixHash must be true)."""
    import copy

    kust = yaml_documents(directory / "kustomization.yaml")[0]
    unknown = set(kust) - KNOWN_FIELDS
    assert not unknown, f"kustomization fields this renderer does not apply: {sorted(unknown)}"
    assert kust.get("generatorOptions", {}).get("disableNameSuffixHash") is True
    docs = [copy.deepcopy(d) for r in kust.get("resources", []) for d in yaml_documents(directory / r)]
    for rep in kust.get("replicas", []):
        targets = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "ReplicaSet")
                   and d["metadata"]["name"] == rep["name"]]
        assert targets, f"replicas: no workload named {rep['name']}"
        for d in targets:
            d["spec"]["replicas"] = rep["count"]
    images = {i["name"]: i for i in kust.get("images", [])}
    for d in docs:
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            name, _, tag = c["image"].partition(":")
            if name in images:
                new = images[name]
                c["image"] = f"{new.get('newName', name)}:{new.get('newTag', tag or 'latest')}"
    for gen in kust.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for env in gen.get("envs", []):
            data.update(env_file(directory / env))
        for f in gen.get("files", []):
            data[Path(f).name] = (directory / f).read_text(encoding="utf-8")
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return docs
