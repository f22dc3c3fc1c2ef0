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
