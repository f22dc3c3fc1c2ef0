"""The step-time model's forms side by side: error on held-back rows, and transfer between GPUs.

Run: .venv/bin/python benchmarks/step_time_forms.py [--splits 10] [--holdout 0.25] [--json]

For every measured profile in config/profiles/ and the H200 rows in ../shared/data/h200/ (when present), fits
each form (``roofline``: overhead + max(compute, memory), the form before; ``launch``: + a prefill
kernel-launch roof and a per-context-token cost; ``auto``: whichever of the two has the lower error on rows held
back from the training rows alone) and prints:
- in-sample: MAPE and worst error of the fit on all rows;
- held back: ``--splits`` seeded splits (seeds 0..N-1), each fitted on the rest and scored on the held-back
  ``--holdout`` fraction: mean MAPE over the splits and the worst error of any held-back row;
- regression (held back only, same splits): what the data-rich route of Vidur does, a scikit-learn gradient-
  boosted regression of log step time on the six step features (``gbr``), and the same boosting fitted to the
  launch form's log residuals, falling back to the launch form outside the training rows' feature ranges
  (``launch+gbr``). On these 42-67 rows they do not beat the launch form (docs/fidelity.md), so neither is a
  ``calibrate`` form;
- transfer: a profile fitted to all rows of one GPU/model, carried to another through the datasheet ratios
  (``transfer_profile``), scored on all rows of the other; the datasheet profile of the target for reference;
  ``+prior``: fitted with ``--prior-weight`` pulling the weight-read time toward the source's datasheet.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from schedctl.sim.calibrate import StepRow, fit_rows, predicted_s, read_rows
from schedctl.sim.fit import holdout_split
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.step_time import StepTimeProfile, transfer_profile

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "config" / "profiles"
H200 = ROOT.parent / "shared" / "data" / "h200" / "h200-mistral-7b.csv"
FORMS = ("roofline", "launch", "auto")
# data set -> (steps file, gpu key, model key, models file) ; gpu None: not a GPU (no transfer)
DATA = {
    "h100-sxm-llama-3.2-1b": (PROFILES / "h100-sxm-llama-3.2-1b" / "steps.csv", "h100-sxm", "llama-3.2-1b"),
    "h100-sxm-llama-3.1-8b": (PROFILES / "h100-sxm-llama-3.1-8b" / "steps.csv", "h100-sxm", "llama-3.1-8b"),
    "h200-mistral-7b": (H200, "h200", "mistral-7b"),
    "cpu-small-llama": (PROFILES / "cpu-small-llama" / "steps.csv", None, None),
}
TRANSFERS = (("h100-sxm-llama-3.1-8b", "h200-mistral-7b"), ("h200-mistral-7b", "h100-sxm-llama-3.1-8b"),
             ("h100-sxm-llama-3.2-1b", "h100-sxm-llama-3.1-8b"), ("h100-sxm-llama-3.1-8b", "h100-sxm-llama-3.2-1b"))


def ape(profile: StepTimeProfile, rows: list[StepRow]) -> np.ndarray:
    measured = np.array([r.seconds for r in rows])
    return np.abs(predicted_s(profile, rows) - measured) / measured


def _features(rows: list[StepRow]) -> np.ndarray:
    b = [r.batch() for r in rows]
    return np.log1p(np.array([[x.new_tokens, x.seqs, x.attn_ctx_tokens, x.kv_tokens, x.prefill_seqs,
                               x.prefill_ctx_tokens] for x in b]))


def held_back_regression(rows: list[StepRow], fraction: float, splits: int) -> dict[str, tuple[float, float]]:
    """Held-back (MAPE, worst) of the two regressions in the module docstring, on the splits ``held_back`` uses."""
    from sklearn.ensemble import GradientBoostingRegressor

    y, x = np.array([r.seconds for r in rows]), _features(rows)
    errs: dict[str, list[np.ndarray]] = {"gbr": [], "launch+gbr": []}
    for seed in range(splits):
        train, held = holdout_split(len(rows), fraction, seed)
        direct = GradientBoostingRegressor(n_estimators=300, max_depth=3, learning_rate=0.05, random_state=0)
        direct.fit(x[train], np.log(y[train]))
        errs["gbr"].append(np.abs(np.exp(direct.predict(x[held])) - y[held]) / y[held])
        base = predicted_s(fit_rows([rows[i] for i in train], "bench", form="launch")[0], rows)
        resid = GradientBoostingRegressor(n_estimators=200, max_depth=2, learning_rate=0.05, subsample=0.8,
                                          random_state=0)
        resid.fit(x[train], np.log(y[train] / base[train]))
        inside = np.all((x[held] >= x[train].min(0)) & (x[held] <= x[train].max(0)), axis=1)
        pred = np.where(inside, base[held] * np.exp(resid.predict(x[held])), base[held])
        errs["launch+gbr"].append(np.abs(pred - y[held]) / y[held])
    return {k: (float(np.mean([e.mean() for e in v])), float(max(e.max() for e in v))) for k, v in errs.items()}


def held_back(rows: list[StepRow], form: str, fraction: float, splits: int) -> tuple[float, float]:
    maps, worst = [], 0.0
    for seed in range(splits):
        train, held = holdout_split(len(rows), fraction, seed)
        profile, _ = fit_rows([rows[i] for i in train], "bench", form=form)
        e = ape(profile, [rows[i] for i in held])
        maps.append(float(e.mean()))
        worst = max(worst, float(e.max()))
    return float(np.mean(maps)), worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--holdout", type=float, default=0.25)
    ap.add_argument("--prior-weight", type=float, default=0.3, help="weight of the datasheet prior on the "
                    "weight-read time in the '+prior' transfer rows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = {k: v for k, v in DATA.items() if v[0].exists()}
    rows = {k: read_rows(v[0])[0] for k, v in data.items()}
    fits: list[dict[str, object]] = []
    if not args.json:
        print(f"held back: {args.splits} splits x {args.holdout:.0%} of the rows; MAPE = mean over splits, "
              f"worst = worst held-back row")
        print(f"{'data':24s} {'rows':>4s} {'form':9s} {'in-sample MAPE':>14s} {'worst':>7s} "
              f"{'held-back MAPE':>14s} {'worst':>7s}  chosen on all rows")
    for name in data:
        for form in FORMS:
            profile, report = fit_rows(rows[name], "bench", form=form)
            h_mape, h_worst = held_back(rows[name], form, args.holdout, args.splits)
            fits.append(dict(data=name, rows=len(rows[name]), form=form, chosen=report.form, mape=report.mape,
                             worst_ape=report.worst_ape, holdout_mape=h_mape, holdout_worst_ape=h_worst))
            if not args.json:
                print(f"{name:24s} {len(rows[name]):4d} {form:9s} {report.mape:14.1%} {report.worst_ape:7.1%} "
                      f"{h_mape:14.1%} {h_worst:7.1%}  {report.form}")
        for form, (h_mape, h_worst) in held_back_regression(rows[name], args.holdout, args.splits).items():
            fits.append(dict(data=name, rows=len(rows[name]), form=form, holdout_mape=h_mape,
                             holdout_worst_ape=h_worst))
            if not args.json:
                print(f"{name:24s} {len(rows[name]):4d} {form:10s} {'-':>13s} {'-':>7s} {h_mape:14.1%} {h_worst:7.1%}")
    transfers: list[dict[str, object]] = []
    if not args.json:
        print("\ntransfer through datasheet ratios: fit on all rows of SRC, predict all rows of DST")
        print(f"{'src -> dst':50s} {'form':14s} {'MAPE':>7s} {'worst':>7s}")
    for src, dst in TRANSFERS:
        if src not in data or dst not in data:
            continue
        _, sg, sm = data[src]
        _, dg, dm = data[dst]
        assert sg and sm and dg and dm
        gs, ms, gd, md = load_gpu(sg), load_model(sm), load_gpu(dg), load_model(dm)
        cells = {"datasheet": StepTimeProfile.from_datasheet(gd, md)}
        for form in FORMS:
            cells[form] = transfer_profile(fit_rows(rows[src], "bench", form=form)[0], gs, ms, gd, md)
        prior = StepTimeProfile.from_datasheet(gs, ms)
        for form in ("roofline", "launch"):
            fitted, _ = fit_rows(rows[src], "bench", prior, form=form, prior_weight=args.prior_weight)
            cells[f"{form}+prior"] = transfer_profile(fitted, gs, ms, gd, md)
        for form, profile in cells.items():
            e = ape(profile, rows[dst])
            transfers.append(dict(src=src, dst=dst, form=form, mape=float(e.mean()), worst_ape=float(e.max())))
            if not args.json:
                print(f"{src + ' -> ' + dst:50s} {form:14s} {e.mean():7.1%} {e.max():7.1%}")
    if args.json:
        print(json.dumps({"splits": args.splits, "holdout": args.holdout, "fits": fits, "transfers": transfers}))


if __name__ == "__main__":
    main()
