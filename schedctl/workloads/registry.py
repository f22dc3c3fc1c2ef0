"""The named workloads, their typed parameters, the command-line and file forms, and the one entry point.

Command-line forms (``--help`` text: :func:`describe_workloads`):

* workload: ``gsp`` or ``gsp:num_groups=32,question_len=64`` (``none`` sets an optional field to unset);
* arrival process: ``poisson``, ``gamma:cv=2``, ``regular``;
* rate schedule: ``10`` (constant, requests/s), ``steps:0=2,60=8`` (START_S=RATE_RPS pairs),
  ``ramp:from_rps=1,to_rps=8,over_s=600``, ``diurnal:mean_rps=5,amplitude_rps=3,period_s=3600``,
  ``bursts:base_rps=2,burst_rps=20,burst_length_s=10,burst_every_s=120``.

A bad string raises ValueError naming the workload (or process, or schedule), the field and the reason.
File form: a TOML file read into :class:`WorkloadConfig` by :func:`load_workload_file` (errors name the file and
the field). Randomness: one seed; arrivals and prompts draw from two independent child streams of it, so the
same seed gives the same prompts whatever the rate or the arrival process.
"""

from __future__ import annotations

import itertools
import os
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schedctl.files import load_toml_model, validation_message
from schedctl.workloads.arrivals import (
    ArrivalSpec,
    BurstsRate,
    ConstantRate,
    DiurnalRate,
    RampRate,
    RateSchedule,
    StepsRate,
    arrival_times,
)
from schedctl.workloads.chat import ChatParams, chat_requests, expected_turns
from schedctl.workloads.shared_prefix import (
    GspParams,
    RasqParams,
    TreeParams,
    gsp_requests,
    rasq_requests,
    tree_requests,
)
from schedctl.workloads.sharegpt import ShareGptParams, sharegpt_requests
from schedctl.workloads.types import Request

WorkloadSpec = Annotated[
    RasqParams | GspParams | TreeParams | ShareGptParams | ChatParams, Field(discriminator="name")
]


@dataclass(frozen=True)
class WorkloadEntry:
    params: type[BaseModel]
    # (params, prompt rng, arrival times) -> requests in arrival order, request ids 0, 1, 2, ...
    generate: Callable[[Any, np.random.Generator, Iterator[float]], Iterator[Request]]
    # requests per arrival of the process (chat: an arrival starts a session of several requests)
    requests_per_arrival: Callable[[Any], float] = lambda _params: 1.0


WORKLOADS: dict[str, WorkloadEntry] = {
    "rasq": WorkloadEntry(RasqParams, rasq_requests),
    "gsp": WorkloadEntry(GspParams, gsp_requests),
    "tree": WorkloadEntry(TreeParams, tree_requests),
    "sharegpt": WorkloadEntry(ShareGptParams, sharegpt_requests),
    "chat": WorkloadEntry(ChatParams, chat_requests, expected_turns),
}

RATE_SCHEDULES: dict[str, type[BaseModel]] = {
    "constant": ConstantRate, "steps": StepsRate, "ramp": RampRate, "diurnal": DiurnalRate, "bursts": BurstsRate,
}
ARRIVAL_PROCESSES = ("poisson", "gamma", "regular")


# --- the entry point ------------------------------------------------------------------------------------------


def make_requests(
    workload: WorkloadSpec | str,
    rate: RateSchedule | float | str,
    arrival: ArrivalSpec | str | None = None,
    num_requests: int | None = None,
    duration_s: float | None = None,
    seed: int = 0,
) -> Iterator[Request]:
    """Requests sorted by arrival_s, lazily: the first ``num_requests`` and/or those arriving before ``duration_s``.

    At least one bound is required. The stream may end earlier if the rate schedule stops (a last step at 0).
    Streams are prefix-stable: asking for more requests extends the same sequence.
    """
    spec = parse_workload(workload) if isinstance(workload, str) else workload
    schedule = parse_rate(rate) if isinstance(rate, str) else rate
    process = parse_arrival(arrival) if isinstance(arrival, str) else (arrival or ArrivalSpec())
    if num_requests is None and duration_s is None:
        raise ValueError("bound the run: give num_requests, duration_s or both")
    if num_requests is not None and num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    entry = WORKLOADS[spec.name]
    arrival_rng, prompt_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    times = arrival_times(process, schedule, arrival_rng, rate_scale=1.0 / entry.requests_per_arrival(spec))
    stream = entry.generate(spec, prompt_rng, times)
    if duration_s is not None:
        end_s = duration_s
        stream = itertools.takewhile(lambda r: r.arrival_s < end_s, stream)
    if num_requests is not None:
        stream = itertools.islice(stream, num_requests)
    return stream


# --- command-line forms ---------------------------------------------------------------------------------------


def _items(what: str, text: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key:
            raise ValueError(f"{what}: {part.strip()!r} is not FIELD=VALUE")
        if key in out:
            raise ValueError(f"{what}: field {key!r} given twice")
        out[key] = None if value.lower() in ("none", "null") else value
    return out


def _validate(model: type[BaseModel], what: str, items: dict[str, Any], fixed: dict[str, Any]) -> Any:
    fields = [f for f in model.model_fields if f not in fixed]
    for key in items:
        if key not in fields:
            raise ValueError(f"{what}: unknown field {key!r} (fields: {', '.join(fields)})")
    try:
        return model.model_validate({**items, **fixed})
    except ValidationError as exc:
        field, reason = validation_message(exc)
        reason = reason.removeprefix("Value error, ")
        given = {**items, **{k: v for k, v in fixed.items() if k not in ("name", "kind", "process")}}
        if field in given:
            raise ValueError(f"{what}: field {field!r}: {reason} (got {given[field]!r})") from None
        raise ValueError(f"{what}: {reason}") from None


def parse_workload(text: str) -> WorkloadSpec:
    """``gsp`` or ``gsp:num_groups=32,question_len=64`` -> the workload's params model."""
    name, _, rest = (s.strip() for s in text.partition(":"))
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")
    what = f"workload {name!r}"
    spec: WorkloadSpec = _validate(WORKLOADS[name].params, what, _items(what, rest), {"name": name})
    return spec


def parse_arrival(text: str) -> ArrivalSpec:
    """``poisson``, ``gamma:cv=2`` or ``regular``."""
    name, _, rest = (s.strip() for s in text.partition(":"))
    if name not in ARRIVAL_PROCESSES:
        raise ValueError(f"unknown arrival process {name!r} (known: {', '.join(ARRIVAL_PROCESSES)})")
    what = f"arrival process {name!r}"
    spec: ArrivalSpec = _validate(ArrivalSpec, what, _items(what, rest), {"process": name})
    return spec


def parse_rate(text: str | float) -> RateSchedule:
    """A number (constant requests/s), ``steps:0=2,60=8``, or ``KIND:FIELD=VALUE,...`` for the other schedules."""
    if isinstance(text, int | float):
        return _validate(ConstantRate, "rate", {}, {"rate_rps": text})
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return _validate(ConstantRate, "rate", {}, {"rate_rps": number})
    kind, _, rest = (s.strip() for s in text.partition(":"))
    if kind not in RATE_SCHEDULES:
        raise ValueError(f"unknown rate schedule {kind!r} (a number, or one of: {', '.join(RATE_SCHEDULES)})")
    what = f"rate schedule {kind!r}"
    items = _items(what, rest)
    if kind == "steps":
        try:
            steps = [(float(k), float(v)) for k, v in items.items()]  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"{what}: expected START_S=RATE_RPS pairs, got {rest!r}") from None
        return _validate(StepsRate, what, {}, {"kind": "steps", "steps": sorted(steps)})
    return _validate(RATE_SCHEDULES[kind], what, items, {"kind": kind})


def _describe(title: str, model: type[BaseModel], skip: str) -> list[str]:
    doc = " ".join((model.__doc__ or "").split())
    lines = [f"  {title}", *textwrap.wrap(doc, 110, initial_indent="      ", subsequent_indent="      ")]
    for name, field in model.model_fields.items():
        if name == skip:
            continue
        default = "(required)" if field.is_required() else f"={field.default}"
        desc = f"  {field.description}" if field.description else ""
        lines.append(f"      {name}{default}{desc}")
    return lines


def describe_workloads() -> str:
    """Every workload with its parameters and defaults, then the arrival processes and rate schedules."""
    lines = ["Workloads (NAME or NAME:FIELD=VALUE,...):"]
    for name, entry in WORKLOADS.items():
        lines += _describe(name, entry.params, "name")
    lines += ["Arrival processes (poisson | gamma:cv=2 | regular):"]
    lines += _describe("poisson | gamma | regular", ArrivalSpec, "process")
    lines += ["Rate schedules (a number in requests/s, steps:START_S=RATE_RPS,..., or KIND:FIELD=VALUE,...):"]
    for kind, model in RATE_SCHEDULES.items():
        lines += _describe(kind, model, "kind")
    return "\n".join(lines)


# --- file form ------------------------------------------------------------------------------------------------


class WorkloadConfig(BaseModel):
    """A workload file: the workload, the arrival process, the rate schedule and the bounds of the run.

    TOML::

        seed = 1
        num_requests = 10000       # and/or duration_s = 600
        rate = 8.0                 # or a [rate] table: kind = "diurnal", mean_rps = 8, ...
        [workload]
        name = "gsp"
        num_groups = 32
        [arrival]
        process = "gamma"
        cv = 2.0
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    workload: WorkloadSpec
    arrival: ArrivalSpec = ArrivalSpec()
    rate: RateSchedule
    num_requests: int | None = Field(None, ge=0)
    duration_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    seed: int = 0

    @field_validator("rate", mode="before")
    @classmethod
    def _number_is_constant(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return {"kind": "constant", "rate_rps": value}
        return value

    @model_validator(mode="after")
    def _bounded(self) -> WorkloadConfig:
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("bound the run: set num_requests, duration_s or both")
        return self

    def requests(self) -> Iterator[Request]:
        return make_requests(self.workload, self.rate, self.arrival, self.num_requests, self.duration_s, self.seed)


def load_workload_file(path: str | os.PathLike[str], table: str | None = None) -> WorkloadConfig:
    """Read a workload TOML file (or one table of a larger settings file); errors name the file and field."""
    return load_toml_model(WorkloadConfig, path, table)
