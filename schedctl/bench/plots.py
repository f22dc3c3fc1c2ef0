"""Plots of simulation results (matplotlib, headless). Each function writes one PNG atomically."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from schedctl.files import AtomicWriter

_LONG_FLOAT = re.compile(r"\d+\.\d{5,}")


def display_label(label: str) -> str:
    """A policy label for people: float noise rounded (``theta_high=5.000000000000002`` -> ``theta_high=5``)."""
    return _LONG_FLOAT.sub(lambda m: f"{float(m.group()):.4g}", label)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: object, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    with AtomicWriter(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")  # type: ignore[attr-defined]
    _pyplot().close(fig)
    return out


def ttft_vs_rate(rows: Sequence[object], path: str | os.PathLike[str], title: str, metric: str = "ttft_p99_s") -> Path:
    """One line per policy: ``metric`` (seconds, log scale) against request rate."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    policies = list(dict.fromkeys(getattr(r, "policy") for r in rows))  # noqa: B009
    for pol in policies:
        pts = sorted((getattr(r, "rate"), getattr(r, metric)) for r in rows if getattr(r, "policy") == pol)  # noqa: B009
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=pol)
    ax.set_yscale("log")
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel({"ttft_p99_s": "P99 TTFT (s)", "ttft_p50_s": "median TTFT (s)"}.get(
        metric, metric.replace("_s", " (s)").replace("_", " ")))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save(fig, path)


def run_timeline(arrival_s: np.ndarray, ttft_s: np.ndarray, path: str | os.PathLike[str], title: str) -> Path:
    """TTFT of each request against its arrival time, and the TTFT distribution."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.scatter(arrival_s, ttft_s, s=3, alpha=0.5)
    ax1.set_xlabel("arrival (s)")
    ax1.set_ylabel("TTFT (s)")
    ax1.set_yscale("log")
    ax1.set_title(title)
    if ttft_s.size:
        xs = np.sort(ttft_s)
        ax2.plot(xs, np.arange(1, xs.size + 1) / xs.size)
        ax2.set_xscale("log")
    ax2.set_xlabel("TTFT (s)")
    ax2.set_ylabel("fraction of requests")
    ax2.grid(True, alpha=0.3)
    return save(fig, path)


def policy_bars(rows: Sequence[object], path: str | os.PathLike[str], title: str, slo_s: float) -> Path:
    """One bar per policy: P99 and P50 TTFT (log scale, the SLO drawn) and SLO attainment (`schedctl whatif`)."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.5))
    names = [display_label(getattr(r, "policy")) for r in rows]  # noqa: B009
    x = np.arange(len(names))
    ax1.bar(x - 0.2, [getattr(r, "ttft_p99_s") for r in rows], 0.4, label="P99")  # noqa: B009
    ax1.bar(x + 0.2, [getattr(r, "ttft_p50_s") for r in rows], 0.4, label="P50")  # noqa: B009
    ax1.axhline(slo_s, color="k", linestyle="--", linewidth=1, label=f"SLO {slo_s:g} s")
    ax1.set_yscale("log")
    ax1.set_ylabel("TTFT (s)")
    ax1.legend()
    ax2.bar(x, [getattr(r, "attainment") for r in rows], 0.6, color="tab:green")  # noqa: B009
    ax2.set_ylim(0, 1)
    ax2.set_ylabel(f"share of requests with TTFT ≤ {slo_s:g} s")
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)
