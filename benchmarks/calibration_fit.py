"""How well the step-time model fits measured forward steps, on rows it saw and on rows it did not.

Run: .venv/bin/python benchmarks/calibration_fit.py [--csv STEPS.csv] [--holdout 0.25] [--splits 5] [--form auto]

Default input: config/profiles/cpu-small-llama/steps.csv (measured on this repository's CPU host with
`schedctl profile`, see config/profiles/README.md). Prints:
- the fit on all rows: MAPE, median and worst absolute percentage error, rows per roofline regime;
- ``--splits`` random hold-outs (seeds 0..N-1): fit on the rest, error on the held-back ``--holdout`` fraction;
- leave-one-out: every row predicted by a fit on all the others (predicted vs measured, worst first).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from schedctl.sim.calibrate import StepRow, evaluate_holdout, fit_rows, predicted_s, read_rows
from schedctl.sim.fit import ALL_COEFFICIENTS

DEFAULT = Path(__file__).resolve().parents[1] / "config" / "profiles" / "cpu-small-llama" / "steps.csv"


def describe(r: StepRow) -> str:
    parts = []
    if r.prefill_tokens:
        parts.append(f"prefill {r.prefill_tokens} (+{r.prefill_context_tokens} cached)")
    if r.decode_seqs:
        parts.append(f"decode {r.decode_seqs} x {r.decode_context_tokens // r.decode_seqs} ctx")
    return " + ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT, help="step CSV or SGLang log")
    ap.add_argument("--holdout", type=float, default=0.25)
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--form", default="auto", choices=["auto", "roofline", "launch"],
                    help="model form (auto: chosen from held-back rows of the training rows)")
    args = ap.parse_args()

    rows, _ = read_rows(args.csv)
    profile, report = fit_rows(rows, "benchmark", form=args.form)
    print(f"{args.csv}: {len(rows)} rows")
    print(f"fit on all rows ({report.form} form): MAPE {report.mape:.1%}, "
          f"median {report.median_ape:.1%}, worst {report.worst_ape:.1%}; "
          f"{report.compute_bound_rows} compute-bound, {report.rows - report.compute_bound_rows} memory-bound")
    print("  " + ", ".join(f"{c}={getattr(profile, c):.3g}" for c in ALL_COEFFICIENTS))
    if report.unidentified:
        print(f"  not separable from these rows: {', '.join(report.unidentified)}")

    maps, worsts = [], []
    for seed in range(args.splits):
        held, _ = evaluate_holdout(rows, args.holdout, seed, "benchmark", form=args.form)
        maps.append(float(held.ape.mean()))
        worsts.append(float(held.ape.max()))
        print(f"hold-out seed {seed}: {len(held.rows)} rows held back: MAPE {maps[-1]:.1%}, worst {worsts[-1]:.1%}")
    print(f"hold-out over {args.splits} splits: MAPE median {statistics.median(maps):.1%} "
          f"(range {min(maps):.1%}..{max(maps):.1%}), worst {max(worsts):.1%}")

    loo = []
    for i, r in enumerate(rows):
        p, _ = fit_rows(rows[:i] + rows[i + 1:], "loo", form=args.form)
        loo.append(float(predicted_s(p, [r])[0]))
    measured = np.array([r.seconds for r in rows])
    err = (np.array(loo) - measured) / measured
    print(f"leave-one-out: MAPE {np.abs(err).mean():.1%}, median {np.median(np.abs(err)):.1%}, "
          f"worst {np.abs(err).max():.1%}")
    print(f"{'step':42s} {'measured ms':>12s} {'predicted ms':>13s} {'error':>8s}")
    for k in np.argsort(-np.abs(err)):
        print(f"{describe(rows[k]):42s} {measured[k] * 1e3:12.3f} {loo[k] * 1e3:13.3f} {err[k]:+8.1%}")


if __name__ == "__main__":
    main()
