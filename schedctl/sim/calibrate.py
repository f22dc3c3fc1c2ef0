"""Calibration inputs and outputs: measured step rows from a CSV or an SGLang server log, fit, profile TOML.

Step-timing CSV (what ``schedctl profile`` writes, and what an operator can write by hand):

- lines starting with ``#`` and blank lines are ignored anywhere (the profiler records the device and the
  model shape in such comment lines);
- the first other line is the header; it must name the columns ``prefill_tokens``, ``prefill_context_tokens``,
  ``decode_seqs``, ``decode_context_tokens``, ``seconds`` and may add ``prefill_seqs`` (default 1), in any
  order; no other columns;
- each further line is one measured forward step: integer token and sequence counts, ``seconds`` its duration.
  The counts mean what :meth:`StepBatch.from_counts` says (prefill: new tokens over ``prefill_seqs``
  sequences after ``prefill_context_tokens`` cached tokens in total; decode: ``decode_seqs`` sequences whose
  contexts total ``decode_context_tokens``).

SGLang server log (the scheduler's own batch lines, SGLang 0.5.23, see :func:`read_sglang_log`):

    [2026-01-05 10:00:01 TP0] Prefill batch [812], #new-seq: 3, #new-token: 6144, #cached-token: 2048, \
        token usage: 0.12, #running-req: 5, #queue-req: 9, #pending-token: 0, cuda graph: False, \
        input throughput (token/s): 81234.56
    [2026-01-05 10:00:02 TP0] Decode batch [852], #running-req: 8, #token: 18000, token usage: 0.05, \
        cuda graph: True, gen throughput (token/s): 812.34, #queue-req: 0

These lines carry counts, not step durations; durations are derived (see :func:`read_sglang_log`).

The profile TOML that :func:`write_profile` writes has a ``[step_time]`` table (the fields of
:class:`StepTimeProfile`, what ``schedctl simulate --step-profile`` reads) and a ``[fit]`` table saying what it
was fitted from and how well.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schedctl.files import AtomicWriter, InputFileError, validation_message
from schedctl.sim.fit import FitReport, Form, choose_form, design_matrix, fit_step_profile, holdout_split, predict_s
from schedctl.sim.profiles import GPUProfile, ModelProfile
from schedctl.sim.step_time import StepBatch, StepTimeProfile

REQUIRED_COLUMNS = ("prefill_tokens", "prefill_context_tokens", "decode_seqs", "decode_context_tokens", "seconds")
OPTIONAL_COLUMNS = ("prefill_seqs",)
CSV_COLUMNS = ("prefill_tokens", "prefill_context_tokens", "prefill_seqs", "decode_seqs", "decode_context_tokens",
               "seconds")  # the order the profiler writes


class StepRow(BaseModel):
    """One measured forward step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefill_tokens: int = Field(ge=0)
    prefill_context_tokens: int = Field(ge=0)
    decode_seqs: int = Field(ge=0)
    decode_context_tokens: int = Field(ge=0)
    seconds: float = Field(gt=0, allow_inf_nan=False)
    prefill_seqs: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _has_work(self) -> StepRow:
        if self.prefill_tokens == 0 and self.decode_seqs == 0:
            raise ValueError("a step needs prefill_tokens > 0 or decode_seqs > 0")
        if self.prefill_tokens and self.prefill_seqs > self.prefill_tokens:
            raise ValueError("prefill_seqs cannot exceed prefill_tokens")
        return self

    def batch(self) -> StepBatch:
        return StepBatch.from_counts(self.prefill_tokens, self.prefill_context_tokens, self.decode_seqs,
                                     self.decode_context_tokens, self.prefill_seqs)

    def csv_values(self) -> list[str]:
        return [str(getattr(self, c)) if c != "seconds" else f"{self.seconds:.9g}" for c in CSV_COLUMNS]


def _parse_number(text: str, integer: bool) -> int | float:
    t = text.strip()
    if integer:
        return int(t)  # ValueError on '1.5', 'abc', ''
    value = float(t)
    if not math.isfinite(value):
        raise ValueError(t)
    return value


def read_steps_csv(path: str | os.PathLike[str]) -> list[StepRow]:
    """Rows of a step-timing CSV; a bad header or row raises InputFileError naming the line and the column."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(p, "", "file not found") from None
    except UnicodeDecodeError:
        raise InputFileError(p, "", "not UTF-8 text") from None
    header: list[str] | None = None
    rows: list[StepRow] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = next(csv.reader([line]))
        if header is None:
            header = [f.strip() for f in fields]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
            dupes = sorted({c for c in header if header.count(c) > 1})
            if missing or unknown or dupes:
                what = "; ".join(
                    msg for msg in (
                        f"missing column(s) {', '.join(missing)}" if missing else "",
                        f"unknown column(s) {', '.join(unknown)}" if unknown else "",
                        f"repeated column(s) {', '.join(dupes)}" if dupes else "",
                    ) if msg
                )
                raise InputFileError(p, f"line {lineno} (header)", f"{what} (expected {', '.join(REQUIRED_COLUMNS)}"
                                                                  f" and optionally {', '.join(OPTIONAL_COLUMNS)})")
            continue
        if len(fields) != len(header):
            raise InputFileError(p, f"line {lineno}", f"{len(fields)} fields, the header has {len(header)}")
        values: dict[str, Any] = {}
        for col, raw in zip(header, fields, strict=True):
            try:
                values[col] = _parse_number(raw, integer=col != "seconds")
            except ValueError:
                kind = "a number of seconds" if col == "seconds" else "a whole number"
                raise InputFileError(p, f"line {lineno}, column {col}", f"{raw.strip()!r} is not {kind}") from None
        try:
            rows.append(StepRow.model_validate(values))
        except ValidationError as exc:
            field, reason = validation_message(exc)
            where = f"line {lineno}" + (f", column {field}" if field in header else "")
            raise InputFileError(p, where, reason) from None
    if header is None:
        raise InputFileError(p, "", "empty: expected a header line and step rows")
    if not rows:
        raise InputFileError(p, "", "no step rows after the header")
    return rows


def write_steps_csv(path: str | os.PathLike[str], rows: Sequence[StepRow], comments: Sequence[str] = ()) -> None:
    """Write rows (and leading ``#`` comment lines) atomically, in the format :func:`read_steps_csv` reads."""
    with AtomicWriter(path) as fh:
        for c in comments:
            fh.write(f"# {c}\n")
        fh.write(",".join(CSV_COLUMNS) + "\n")
        for r in rows:
            fh.write(",".join(r.csv_values()) + "\n")


_BATCH_LINE = re.compile(
    r"\[(?P<ts>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?)(?P<ranks>[^\]]*)\]\s+"
    r"(?P<kind>Prefill|Decode) batch(?: \[(?P<iter>\d+)\])?, (?P<fields>.*)$"
)
_MARKER = re.compile(r"\]\s+(?:Prefill|Decode) batch\b")
_PREFILL_KEYS = ("#new-seq", "#new-token", "#cached-token", "input throughput (token/s)")
_DECODE_KEYS = ("#running-req", "gen throughput (token/s)")


@dataclass
class SGLangLogRead:
    """Rows derived from an SGLang log, and why the other batch lines gave none (reason -> count)."""

    rows: list[StepRow] = field(default_factory=list)
    prefill_rows: int = 0
    decode_rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def _log_fields(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(", "):
        key, sep, value = part.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _field(path: Path, lineno: int, fields: dict[str, str], key: str, integer: bool) -> int | float:
    if key not in fields:
        raise InputFileError(path, f"line {lineno}", f"batch line without {key!r}")
    try:
        value = _parse_number(fields[key], integer)
    except ValueError:
        raise InputFileError(path, f"line {lineno}", f"{key!r}: {fields[key]!r} is not a number") from None
    if value < 0:
        raise InputFileError(path, f"line {lineno}", f"{key!r}: {fields[key]!r} is negative")
    return value


def read_sglang_log(path: str | os.PathLike[str]) -> SGLangLogRead:
    """Step rows from the ``Prefill batch`` / ``Decode batch`` lines an SGLang server logs.

    Other lines are ignored; a batch line that cannot be read raises InputFileError with its line number. The
    lines carry counts, and durations are derived as follows (state is kept per rank prefix, e.g. ``DP1 TP0``):

    - Decode line: SGLang prints it every ``--decode-log-interval`` (40) decode steps, with
      ``gen throughput`` = tokens generated since the previous decode line / seconds since then. When only
      decode steps ran in between (no Prefill line since the previous Decode line of the same rank), one step
      took ``#running-req / gen throughput`` seconds: row ``decode_seqs = #running-req``,
      ``decode_context_tokens = #token`` (KV tokens in use; a prefix shared by several requests is counted
      once, so heavy prefix sharing understates the attention work). Skipped: the first decode line of a rank
      (its interval starts at server start-up), lines whose interval included prefill steps or idle time
      (idle always ends with a prefill), speculative decoding (``accept len``: tokens per step are not the
      batch size), zero throughput. The batch may shrink within the interval; the row uses its final size.
    - Prefill line: ``input throughput`` = new tokens / seconds since the previous prefill line, so
      ``#new-token / input throughput`` is one step's duration only when the previous forward step was that
      previous prefill. That is checkable only with forward-iteration numbers, which SGLang prints when the
      server runs with ``SGLANG_LOG_FORWARD_ITERS=1`` (``Prefill batch [812], ...``): a prefill row is kept when
      the previous prefill line of the rank has iteration N-1 and reported requests still waiting
      (``#queue-req`` > 0). Consecutive iteration numbers alone do not rule out idle time: a server serving one
      request at a time logs prefill [101], then prefill [102] a third of a second later when the next request
      arrives, and ``input throughput`` then counts the wait. Row: ``prefill_tokens = #new-token``
      (+ ``#replay-token``), ``prefill_context_tokens = #cached-token``, ``prefill_seqs = #new-seq``. Decode
      requests riding along in a mixed batch (``--enable-mixed-chunk``) are not visible in the line: calibrate
      with that option off.

    What can be fitted from a log: decode rows alone pin down the memory terms and the sum of the per-token
    and per-sequence compute costs (they are equal counts in decode); the prefill rows (with iteration numbers)
    are needed for the per-token, per-sequence and attention costs separately. The fit report names
    coefficients the rows cannot separate.
    """
    p = Path(path)
    try:
        fh = p.open("r", encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise InputFileError(p, "", "file not found") from None
    out = SGLangLogRead()
    last_kind: dict[str, str] = {}  # rank -> kind of its previous batch line
    last_prefill_iter: dict[str, int | None] = {}
    last_prefill_waiting: dict[str, bool] = {}  # rank -> its previous prefill line reported #queue-req > 0
    with fh:
        for lineno, line in enumerate(fh, start=1):
            if not _MARKER.search(line):
                continue
            m = _BATCH_LINE.search(line.rstrip("\n"))
            if m is None:
                raise InputFileError(p, f"line {lineno}", "a Prefill/Decode batch line in an unknown format "
                                                          "(expected SGLang's '[DATE TIME RANKS] X batch, k: v, ...')")
            rank, kind = m["ranks"].strip(), m["kind"]
            fields = _log_fields(m["fields"])
            it = int(m["iter"]) if m["iter"] is not None else None
            previous = last_kind.get(rank)
            last_kind[rank] = kind
            if kind == "Decode":
                seqs = int(_field(p, lineno, fields, "#running-req", True))
                ctx_key = "#token" if "#token" in fields else "#full token"
                ctx = int(_field(p, lineno, fields, ctx_key, True))
                tput = float(_field(p, lineno, fields, "gen throughput (token/s)", False))
                reason = ("first decode line of the rank" if previous is None else
                          "decode interval included prefill steps" if previous != "Decode" else
                          "speculative decoding" if "accept len" in fields else
                          "zero throughput or batch" if tput <= 0 or seqs == 0 else "")
                if reason:
                    out.skipped[reason] += 1
                    continue
                row = dict(prefill_tokens=0, prefill_context_tokens=0, decode_seqs=seqs, decode_context_tokens=ctx,
                           seconds=seqs / tput)
                out.decode_rows += 1
            else:
                new = int(_field(p, lineno, fields, "#new-token", True))
                new += int(_field(p, lineno, fields, "#replay-token", True)) if "#replay-token" in fields else 0
                cached = int(_field(p, lineno, fields, "#cached-token", True))
                nseq = int(_field(p, lineno, fields, "#new-seq", True))
                tput = float(_field(p, lineno, fields, "input throughput (token/s)", False))
                prev_it = last_prefill_iter.get(rank)
                last_prefill_iter[rank] = it
                prev_waiting = last_prefill_waiting.get(rank, False)
                waiting = _field(p, lineno, fields, "#queue-req", True) if "#queue-req" in fields else 0
                last_prefill_waiting[rank] = waiting > 0
                reason = ("no forward-iteration numbers (run SGLang with SGLANG_LOG_FORWARD_ITERS=1)" if it is None
                          else "previous forward step was not a logged prefill" if prev_it != it - 1
                          else "nothing waited after the previous prefill (idle time may precede it)"
                          if not prev_waiting
                          else "zero throughput or tokens" if tput <= 0 or new == 0 or nseq == 0 else "")
                if reason:
                    out.skipped[reason] += 1
                    continue
                row = dict(prefill_tokens=new, prefill_context_tokens=cached, prefill_seqs=min(nseq, new),
                           decode_seqs=0, decode_context_tokens=0, seconds=new / tput)
                out.prefill_rows += 1
            out.rows.append(StepRow.model_validate(row))
    return out


def read_rows(path: str | os.PathLike[str], fmt: str = "auto") -> tuple[list[StepRow], Counter[str]]:
    """Rows from a step CSV or an SGLang log (``fmt`` auto: a ``.csv`` name is a CSV, anything else a log)."""
    if fmt == "auto":
        fmt = "csv" if Path(path).suffix.lower() == ".csv" else "sglang-log"
    if fmt == "csv":
        return read_steps_csv(path), Counter()
    if fmt != "sglang-log":
        raise ValueError(f"unknown input format {fmt!r} (csv, sglang-log, auto)")
    got = read_sglang_log(path)
    if not got.rows:
        why = "; ".join(f"{n} x {r}" for r, n in got.skipped.most_common()) or "no Prefill/Decode batch lines"
        raise InputFileError(path, "", f"no usable SGLang batch lines ({why})")
    return got.rows, got.skipped


def neutral_profile() -> StepTimeProfile:
    """All-zero coefficients: a start for the fit that assumes nothing about the hardware."""
    return StepTimeProfile(overhead_s=0, s_per_new_token=0, s_per_seq=0, s_per_attn_ctx_token=0, memory_base_s=0,
                           s_per_kv_token=0, source="neutral")


def fit_rows(
    rows: Sequence[StepRow], source: str, initial: StepTimeProfile | None = None, form: Form | str = "auto",
    prior_weight: float = 0.0,
) -> tuple[StepTimeProfile, FitReport]:
    """Fit ``form`` (roofline | launch) to the rows; ``auto``: the form with the lower error on rows held back
    from these rows (:func:`schedctl.sim.fit.choose_form`)."""
    batches, seconds = [r.batch() for r in rows], [r.seconds for r in rows]
    start = initial or neutral_profile()
    if form == "auto":
        form, _ = choose_form(batches, seconds, start, prior_weight=prior_weight)
    if form not in ("roofline", "launch"):
        raise ValueError(f"unknown model form {form!r} (auto, roofline, launch)")
    return fit_step_profile(batches, seconds, start, source, form=form,  # type: ignore[arg-type]
                            prior_weight=prior_weight)


def predicted_s(profile: StepTimeProfile, rows: Sequence[StepRow]) -> np.ndarray:
    return predict_s(profile, design_matrix([r.batch() for r in rows]))


class Holdout(BaseModel):
    """Predicted against measured for rows the fit did not see."""

    rows: list[StepRow]
    predicted_s: list[float]

    @property
    def ape(self) -> np.ndarray:
        measured = np.array([r.seconds for r in self.rows])
        return np.abs(np.array(self.predicted_s) - measured) / measured


def evaluate_holdout(rows: Sequence[StepRow], fraction: float, seed: int, source: str,
                     initial: StepTimeProfile | None = None, form: Form | str = "auto",
                     prior_weight: float = 0.0) -> tuple[Holdout, FitReport]:
    """Fit on the rows not held back (``auto`` chooses the form from those rows alone); predict the held-back
    ones. Returns them and the training fit's report."""
    train, held = holdout_split(len(rows), fraction, seed)
    if len(held) == 0:
        raise ValueError("nothing held back")
    profile, report = fit_rows([rows[i] for i in train], source, initial, form, prior_weight)
    held_rows = [rows[i] for i in held]
    return Holdout(rows=held_rows, predicted_s=predicted_s(profile, held_rows).tolist()), report


def achieved_throughput(profile: StepTimeProfile, model: ModelProfile) -> dict[str, float]:
    """What the coefficients imply in hardware terms for this model shape (left out where a coefficient is 0)."""
    out = {}
    if profile.s_per_new_token:
        out["achieved_matmul_tflops"] = 2 * model.layer_matmul_params / profile.s_per_new_token / 1e12
    if profile.s_per_kv_token:
        out["achieved_kv_read_gbps"] = model.kv_bytes_per_token / profile.s_per_kv_token / 1e9
    if profile.memory_base_s:
        out["achieved_weight_read_gbps"] = model.weight_bytes / profile.memory_base_s / 1e9
    return out


def fit_table(report: FitReport, source: str, profile: StepTimeProfile, gpu: GPUProfile | None,
              model: ModelProfile | None, holdout: Holdout | None = None) -> dict[str, Any]:
    """The ``[fit]`` table of a profile TOML."""
    out: dict[str, Any] = {
        "source": source, "rows": report.rows, "mape": report.mape, "median_ape": report.median_ape,
        "worst_ape": report.worst_ape, "compute_bound_rows": report.compute_bound_rows, "form": report.form,
        "launch_bound_rows": report.launch_bound_rows,
        "unidentified": list(report.unidentified), "from_initial": list(report.from_initial),
    }
    if model is not None:
        out["model"] = model.name
        out.update(achieved_throughput(profile, model))
    if gpu is not None:
        out["gpu"] = gpu.name
    if gpu is not None and model is not None:
        comp, mem = profile.efficiencies(gpu, model)
        out["compute_efficiency"] = comp
        out["memory_efficiency"] = mem
    if holdout is not None:
        ape = holdout.ape
        out["holdout_rows"] = len(holdout.rows)
        out["holdout_mape"] = float(ape.mean())
        out["holdout_worst_ape"] = float(ape.max())
    return out


def write_profile(path: str | os.PathLike[str], profile: StepTimeProfile, fit: dict[str, Any]) -> None:
    """Write ``[step_time]`` + ``[fit]`` atomically (``schedctl simulate --step-profile`` reads the first)."""
    doc = {"step_time": profile.model_dump(), "fit": fit}
    with AtomicWriter(path) as fh:
        fh.write("# Written by `schedctl calibrate`: the step-time model's coefficients (seconds per feature) and\n"
                 "# how well they fit the measured rows. Load with `schedctl simulate --step-profile FILE`.\n")
        fh.write(tomli_w.dumps(doc))
