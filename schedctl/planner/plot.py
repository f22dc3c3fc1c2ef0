"""The planner's picture: cost per hour against SLO attainment for every plan a search evaluated (one PNG).

The x axis is the share of requests missed (1 − attainment), logarithmic above 0.1%, so the plans near the target
— the ones that matter — are spread out rather than piled up against attainment 1.
"""

from __future__ import annotations

import os
from pathlib import Path

from schedctl.files import AtomicWriter
from schedctl.planner.objective import SearchResult


def cost_vs_attainment(result: SearchResult, attainment_target: float, path: str | os.PathLike[str],
                       title: str) -> Path:
    """Visited plans (feasible and not), the best one and the runners-up, and the attainment target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for feasible, colour, label in ((False, "0.65", "misses the SLO"), (True, "tab:blue", "meets the SLO")):
        pts = [s for s in result.visited if s.feasible == feasible]
        if pts:
            ax.scatter([1 - s.attainment for s in pts], [s.cost_usd_per_hour for s in pts], s=16, c=colour,
                       alpha=0.7, label=f"{label} ({len(pts)})")
    if result.runners_up:
        ax.scatter([1 - s.attainment for s in result.runners_up], [s.cost_usd_per_hour for s in result.runners_up],
                   s=60, facecolors="none", edgecolors="tab:orange", label="runners-up")
    best = result.best
    ax.scatter([1 - best.attainment], [best.cost_usd_per_hour], s=180, marker="*", c="tab:red", zorder=5,
               label=f"{'best' if result.feasible else 'closest (infeasible)'}: {best.plan.label()}")
    ax.axvline(1 - attainment_target, color="tab:red", linestyle="--", linewidth=1, label="attainment target")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlim(left=0)
    ax.set_xlabel("share of requests outside the TTFT and TBT targets (1 − attainment; log above 0.001)")
    ax.set_ylabel("cost ($/h)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    out = Path(path)
    with AtomicWriter(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
