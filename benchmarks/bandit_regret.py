"""Cumulative regret of every learner on a stationary, an abruptly changing and a slowly drifting environment.

    .venv/bin/python benchmarks/bandit_regret.py [--horizon 3000] [--seeds 5] [--out out/bandit_regret.png]

Five arms labelled like k-LPM's k (1, 2, 4, 8, "inf"), Bernoulli rewards. Regret is dynamic pseudo-regret: the
sum over steps of (best mean now - mean of the arm played). Prints a table (mean ± sd over seeds of the final
regret) and saves the mean regret curves as a plot. No assertions: numbers to read.

Environments:
- stationary: means 0.3, 0.45, 0.7, 0.55, 0.2 (arm 4 best);
- abrupt: arm 4 best (0.8) until T/3; then "inf" jumps from 0.2 to 0.95 while arm 4 stays (the case where
  averaging all history is slow); at 2T/3 arm 1 becomes best (0.85) and arms 4 and "inf" drop;
- drifting: every mean is 0.5 + 0.3 sin(2 pi t / (T/2) + 2 pi i / 5): the best arm changes smoothly.

LinUCB is given a constant context (it then reduces to a ridge-regression UCB); ContextualBandit is left out
(with one load bucket it is its per-bucket learner). EXP3's gamma is tuned for the horizon.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rich.console import Console
from rich.table import Table

from schedctl.bandits import exp3_gamma_for_horizon, make_bandit
from schedctl.bandits.synthetic import SyntheticEnv, abrupt, drifting, simulate, stationary

ARMS: list[Any] = [1, 2, 4, 8, "inf"]


def environments(horizon: int) -> dict[str, SyntheticEnv]:
    third = horizon // 3
    return {
        "stationary": stationary([0.3, 0.45, 0.7, 0.55, 0.2], ARMS),
        "abrupt": abrupt(
            [
                (0, [0.3, 0.5, 0.8, 0.4, 0.2]),
                (third, [0.3, 0.5, 0.8, 0.4, 0.95]),
                (2 * third, [0.85, 0.5, 0.3, 0.4, 0.2]),
            ],
            ARMS,
        ),
        "drifting": drifting([0.5] * 5, amplitude=0.3, period_steps=horizon / 2, arms=ARMS),
    }


def learners(horizon: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """Display name -> (factory name, parameters); defaults unless said."""
    return {
        "ucb1": ("ucb1", {}),
        "sliding_window_ucb": ("sliding_window_ucb", {}),
        "discounted_ucb": ("discounted_ucb", {}),
        "thompson_beta": ("thompson_beta", {}),
        "thompson_gaussian": ("thompson_gaussian", {}),
        "discounted_thompson_beta": ("discounted_thompson_beta", {}),
        "discounted_thompson_gaussian": ("discounted_thompson_gaussian", {}),
        "exp3": ("exp3", {"gamma": exp3_gamma_for_horizon(len(ARMS), horizon)}),
        "linucb (constant context)": ("linucb", {"n_features": 1, "fit_intercept": False}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon", type=int, default=3000, help="steps per run")
    parser.add_argument("--seeds", type=int, default=5, help="runs per learner and environment")
    parser.add_argument("--out", type=Path, default=Path("out/bandit_regret.png"), help="plot file")
    args = parser.parse_args()

    envs = environments(args.horizon)
    table = Table(title=f"cumulative regret after {args.horizon} steps (mean ± sd over {args.seeds} seeds)")
    table.add_column("learner", no_wrap=True)
    for name in envs:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("s/run", justify="right", no_wrap=True)

    curves: dict[str, dict[str, np.ndarray]] = {env: {} for env in envs}
    start_s = time.perf_counter()
    for label, (name, params) in learners(args.horizon).items():
        cells = []
        for env_name, env in envs.items():
            context_fn = (lambda t: [1.0]) if name == "linucb" else None
            runs = [
                simulate(make_bandit(name, ARMS, seed, **params), env, args.horizon, 1000 + seed, context_fn).regret
                for seed in range(args.seeds)
            ]
            final = np.array([r[-1] for r in runs])
            cells.append(f"{final.mean():7.1f} ± {final.std():5.1f}")
            curves[env_name][label] = np.mean(runs, axis=0)
        elapsed_s = (time.perf_counter() - start_s) / (len(envs) * args.seeds)
        table.add_row(label, *cells, f"{elapsed_s:.2f}")
        start_s = time.perf_counter()
    Console(width=120).print(table)

    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4.5), sharey=False)
    for ax, (env_name, by_learner) in zip(axes, curves.items(), strict=True):
        for label, curve in by_learner.items():
            ax.plot(np.arange(1, args.horizon + 1), curve, label=label, linewidth=1.2)
        ax.set_title(env_name)
        ax.set_xlabel("step")
        ax.set_ylabel("cumulative regret")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(args.out.parent, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
