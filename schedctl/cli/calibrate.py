"""`schedctl calibrate` (fit the step-time model to measured steps) and `schedctl profile` (measure them with torch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from schedctl.cli import common
from schedctl.cli.common import UsageError
from schedctl.sim.calibrate import (
    Holdout,
    StepRow,
    evaluate_holdout,
    fit_rows,
    fit_table,
    read_rows,
    write_profile,
    write_steps_csv,
)
from schedctl.sim.fit import ALL_COEFFICIENTS
from schedctl.sim.profiles import GPUProfile, ModelProfile, load_gpu, load_model
from schedctl.sim.step_time import StepTimeProfile

ROW_COLUMNS = ["prefill", "cached ctx", "decode seqs", "decode ctx (all seqs)", "measured (ms)", "predicted (ms)",
               "error"]


def _hardware(gpu: str | None, model: str | None, gpus_file: Path | None,
              models_file: Path | None) -> tuple[GPUProfile | None, ModelProfile | None]:
    return (load_gpu(gpu, gpus_file) if gpu else None), (load_model(model, models_file) if model else None)


def _row_cells(r: StepRow, predicted_s: float) -> list[object]:
    err = f"{(predicted_s - r.seconds) / r.seconds:+.1%}"
    return [r.prefill_tokens, r.prefill_context_tokens, r.decode_seqs, r.decode_context_tokens, r.seconds * 1e3,
            predicted_s * 1e3, err]


def calibrate_cmd(
    source: Path = typer.Option(..., "--from", help="measured steps: a step CSV (schedctl profile) or an SGLang log"),
    out: Path | None = typer.Option(None, "--out", help="write the fitted profile TOML (for simulate --step-profile)",
                                       callback=common.output_file),
    fmt: str = typer.Option("auto", "--format", help="auto (a .csv name is a CSV, else an SGLang log) | csv | "
                                                     "sglang-log"),
    gpu: str | None = typer.Option(None, "--gpu", help="GPU profile: report efficiencies, seed the fit's regimes"),
    model: str | None = typer.Option(None, "--model", help="model shape the steps ran (config/models.toml)"),
    gpus_file: Path | None = typer.Option(None, "--gpus-file", help="GPU catalog (default config/gpus.toml)"),
    models_file: Path | None = typer.Option(None, "--models-file", help="model catalog (default config/models.toml)"),
    holdout: float = typer.Option(0.0, "--holdout", help="fraction of rows held back: fit the rest, report predicted "
                                                         "vs measured on them (the written profile uses all rows)"),
    seed: int = typer.Option(0, "--seed", help="seed of the held-back choice"),
    show: int = typer.Option(20, "--show", help="held-back rows to print"),
    form: str = typer.Option("auto", "--form", help="model form: roofline (overhead + max(compute, memory)), launch "
                                                    "(+ a prefill kernel-launch roof and a per-context-token cost) "
                                                    "or auto (the one with the lower error on held-back rows)"),
    prior_weight: float = typer.Option(0.0, "--prior-weight", help="with --gpu and --model: pull the weight-read "
                                       "time toward the datasheet's (0: off; 0.3 made profiles carry to another "
                                       "GPU better, see benchmarks/step_time_forms.py)"),
    as_json: bool = common.JSON,
) -> None:
    """Fit the step-time model's coefficients (non-negative least squares) to measured step timings."""
    if fmt not in ("auto", "csv", "sglang-log"):
        raise UsageError(f"--format {fmt!r}: expected auto, csv or sglang-log")
    if form not in ("auto", "roofline", "launch"):
        raise UsageError(f"--form {form!r}: expected auto, roofline or launch")
    if not prior_weight >= 0:
        raise UsageError(f"--prior-weight {prior_weight}: expected a weight >= 0")
    if not 0 <= holdout < 1:
        raise UsageError(f"--holdout {holdout}: expected a fraction in [0, 1)")
    gpu_p, model_p = _hardware(gpu, model, gpus_file, models_file)
    initial = StepTimeProfile.from_datasheet(gpu_p, model_p) if gpu_p and model_p else None
    rows, skipped = read_rows(source, fmt)
    if len(rows) < 4 or (holdout and len(rows) - max(1, round(len(rows) * holdout)) < 4):
        raise UsageError(f"--from {source}: {len(rows)} usable rows; the fit needs at least 4 (after holding back)")
    label = f"fit:{source.parent.name}/{source.name}" if source.parent.name else f"fit:{source.name}"
    held: Holdout | None = None
    if holdout:
        held, _ = evaluate_holdout(rows, holdout, seed, label, initial, form, prior_weight)
    profile, report = fit_rows(rows, label, initial, form, prior_weight)
    table = fit_table(report, str(source), profile, gpu_p, model_p, held)
    if out is not None:
        write_profile(out, profile, table)
    if as_json:
        doc: dict[str, Any] = {"step_time": profile.model_dump(), "fit": table, "skipped_lines": dict(skipped)}
        if held is not None:
            doc["holdout"] = [{**r.model_dump(), "predicted_s": p} for r, p in zip(held.rows, held.predicted_s,
                                                                                  strict=True)]
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    console = Console()
    for reason, n in skipped.most_common():
        console.print(f"[yellow]skipped {n} batch line(s): {reason}[/]")
    console.print(common.table(f"step-time profile ({report.form} form) fitted to {report.rows} rows of {source.name}",
                               ["coefficient", "value"], [[c, getattr(profile, c)] for c in ALL_COEFFICIENTS]))
    console.print(f"fit error over all rows: MAPE {report.mape:.2%}, median {report.median_ape:.2%}, "
                  f"worst {report.worst_ape:.2%}; {report.compute_bound_rows}/{report.rows} rows compute-bound, "
                  f"{report.launch_bound_rows} launch-bound")
    if report.unidentified:
        console.print(f"[yellow]not separable from these rows (their split is arbitrary): "
                      f"{', '.join(report.unidentified)}[/]")
    if report.from_initial:
        console.print(f"[yellow]no rows in their regime, kept from the starting profile: "
                      f"{', '.join(report.from_initial)}[/]")
    for key in ("compute_efficiency", "memory_efficiency", "achieved_matmul_tflops", "achieved_kv_read_gbps",
                "achieved_weight_read_gbps"):
        if key in table:
            console.print(f"{key.replace('_', ' ')}: {table[key]:.4g}")
    if held is not None:
        ape = held.ape
        console.print(common.table(
            f"held back: {len(held.rows)} rows (fit on the other {len(rows) - len(held.rows)}): MAPE "
            f"{ape.mean():.2%}, worst {ape.max():.2%}", ROW_COLUMNS,
            [_row_cells(r, p) for r, p in list(zip(held.rows, held.predicted_s, strict=True))[:show]]))
    if out is not None:
        console.print(f"wrote {out} (use: schedctl simulate --step-profile {out})")


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected comma-separated whole numbers") from None
    if any(v < 0 for v in values):
        raise UsageError(f"{what} {text!r}: negative value")
    return values


def _mixed(text: str | None) -> list[tuple[int, int, int]] | None:
    if text is None:
        return None
    if text.strip() == "none":
        return []
    out = []
    for part in text.split(","):
        bits = _ints(part.replace(":", ","), "--mixed")
        if bits is None or len(bits) != 3:
            raise UsageError(f"--mixed {part!r}: expected PREFILL_TOKENS:DECODE_SEQS:CONTEXT_PER_SEQ")
        out.append((bits[0], bits[1], bits[2]))
    return out


def profile_cmd(
    out: Path = typer.Option(..., "--out", help="write the measured rows here (CSV for schedctl calibrate)",
                               callback=common.output_file),
    model: str = typer.Option("llama-3.2-1b", "--model", help="model shape (config/models.toml); the shape options "
                                                               "override its fields"),
    models_file: Path | None = typer.Option(None, "--models-file", help="model catalog (default config/models.toml)"),
    layers: int | None = typer.Option(None, "--layers", help="number of layers"),
    hidden: int | None = typer.Option(None, "--hidden", help="hidden size"),
    heads: int | None = typer.Option(None, "--heads", help="attention heads"),
    kv_heads: int | None = typer.Option(None, "--kv-heads", help="KV heads (grouped-query attention)"),
    head_dim: int | None = typer.Option(None, "--head-dim", help="head size (default hidden / heads if those change)"),
    intermediate: int | None = typer.Option(None, "--intermediate", help="MLP intermediate size"),
    vocab: int | None = typer.Option(None, "--vocab", help="vocabulary size"),
    grid: str = typer.Option("default", "--grid", help="preset: default (GPU-sized) | small (small models on CPU)"),
    prefill_tokens: str | None = typer.Option(None, "--prefill-tokens", help="new tokens of a prefill, e.g. 128,1024"),
    prefill_context: str | None = typer.Option(None, "--prefill-context-tokens", help="cached tokens before it"),
    decode_seqs: str | None = typer.Option(None, "--decode-seqs", help="decode batch sizes, e.g. 1,8,64"),
    decode_context: str | None = typer.Option(None, "--decode-context-tokens", help="context of each decode seq"),
    mixed: str | None = typer.Option(None, "--mixed", help="prefill+decode steps P:B:C,... (or none)"),
    warmup: int | None = typer.Option(None, "--warmup", help="untimed runs per step"),
    repetitions: int | None = typer.Option(None, "--repetitions", help="timed runs per step"),
    passes: int | None = typer.Option(None, "--passes", help="measure the whole grid this many times (shuffled)"),
    statistic: str | None = typer.Option(None, "--statistic", help="median (default) | min (for a shared host: "
                                                                   "interference only adds time)"),
    device: str = typer.Option("auto", "--device", help="auto (cuda if torch sees one, else cpu) | cpu | cuda:N"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on GPU, float32 on CPU) | float16 | ..."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads (1 is steadiest on a busy host)"),
    max_kv_gib: float | None = typer.Option(None, "--max-kv-gib", help="skip steps whose KV cache is larger "
                                                                       "(default 80% of free GPU memory, 4 on CPU)"),
    cuda_graphs: bool = typer.Option(True, "--cuda-graphs/--no-cuda-graphs", help="replay decode steps from CUDA "
                                                                                  "graphs (as SGLang does)"),
    clock: str = typer.Option("wall", "--clock", help="wall | cpu (CPU time of the one torch thread: steady on a "
                                                      "busy shared CPU; needs --device cpu --threads 1)"),
    seed: int = common.SEED,
) -> None:
    """Time forward steps of a random-weight Llama-style model with torch and write rows for calibrate."""
    from schedctl.sim.torch_profile import GRIDS, ProfileGrid, TorchMissing, profile_steps

    if clock not in ("wall", "cpu"):
        raise UsageError(f"--clock {clock!r}: expected wall or cpu")
    if clock == "cpu" and (threads != 1 or device != "cpu"):
        raise UsageError("--clock cpu times one thread: give --device cpu --threads 1")
    if statistic not in (None, "median", "min"):
        raise UsageError(f"--statistic {statistic!r}: expected median or min")
    if grid not in GRIDS:
        raise UsageError(f"--grid {grid!r}: expected one of {', '.join(GRIDS)}")
    base = load_model(model, models_file)
    given = {"num_layers": layers, "hidden_size": hidden, "num_attention_heads": heads, "num_kv_heads": kv_heads,
             "head_dim": head_dim, "intermediate_size": intermediate, "vocab_size": vocab}
    shape_over: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if head_dim is None and ("hidden_size" in shape_over or "num_attention_heads" in shape_over):
        shape_over["head_dim"] = (hidden or base.hidden_size) // (heads or base.num_attention_heads)
    if shape_over:
        shape_over["name"] = f"custom (from {base.name})"
    shape = ModelProfile.model_validate({**base.model_dump(), **shape_over})
    if shape.num_attention_heads % shape.num_kv_heads:
        raise UsageError(f"--heads {shape.num_attention_heads} is not a multiple of --kv-heads {shape.num_kv_heads}")
    if shape.head_dim % 2:
        raise UsageError(f"head size {shape.head_dim} must be even (rotary embedding)")
    over = {k: v for k, v in {
        "prefill_tokens": _ints(prefill_tokens, "--prefill-tokens"),
        "prefill_context_tokens": _ints(prefill_context, "--prefill-context-tokens"),
        "decode_seqs": _ints(decode_seqs, "--decode-seqs"),
        "decode_context_per_seq": _ints(decode_context, "--decode-context-tokens"),
        "mixed": _mixed(mixed), "warmup": warmup, "repetitions": repetitions, "passes": passes,
        "statistic": statistic}.items()
        if v is not None}
    the_grid = ProfileGrid.model_validate({**GRIDS[grid].model_dump(), **over})
    if not the_grid.points():
        raise UsageError("the grid has no steps to time")
    err = Console(stderr=True)

    def progress(done: int, total: int, row: StepRow) -> None:
        err.print(f"  [{done}/{total}] prefill {row.prefill_tokens} (+{row.prefill_context_tokens} cached), "
                  f"decode {row.decode_seqs} x {row.decode_context_tokens // max(1, row.decode_seqs)}: "
                  f"{row.seconds * 1e3:.3f} ms", highlight=False)

    try:
        result = profile_steps(shape, the_grid, device=device, dtype=dtype, seed=seed, max_kv_gib=max_kv_gib,
                               cuda_graphs=cuda_graphs, threads=threads,
                               clock="cpu" if clock == "cpu" else "wall", on_point=progress)
    except TorchMissing as exc:  # printed plainly: rich markup would eat the "[profile]" of the hint
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None  # (typer.Exit's code is lost under standalone_mode=False)
    for why in result.skipped:
        err.print(f"[yellow]note: {why}[/]", highlight=False)
    if not result.rows:
        raise UsageError("no step was measured (all over --max-kv-gib?)")
    write_steps_csv(out, result.rows, result.comments(shape, the_grid, seed))
    Console().print(f"wrote {len(result.rows)} rows to {out} ({result.device}); next: schedctl calibrate --from {out}"
                    f" --out PROFILE.toml", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_cmd)
    app.command("profile")(profile_cmd)
