"""Named scenarios: traffic that changes over time, built by chaining and merging workload streams.

A scenario is a list of phases; a phase lasts ``duration_s`` and serves one or more streams at once (a stream is
a workload in its command-line form, a rate schedule and an arrival process, all as in ``schedctl simulate``;
the schedule's time is measured from the phase's start). Several streams in one phase model a server shared by
several applications (a chatbot with a common system prompt beside a summariser of unique documents).

Token ids are kept apart where they must be and shared where they should be:

* shared prefix ids (below ``SYNTHETIC_TOKEN_BASE``) get one namespace per distinct workload string, so the same
  workload in two phases reuses its prefixes (a cache warmed in phase 1 still helps in phase 3) while two
  different workloads never match each other by accident;
* unique ids (questions, at or above the base) get one slot per (phase, stream), so they never collide.

Request ids are renumbered 0, 1, 2, ... in arrival order. Every stream draws from its own seed, derived from the
scenario seed and its (phase, stream) position: the same seed gives the same requests.

A stream may instead replay a trace (``trace = "traces/mooncake-synthetic.jsonl"``, a path relative to the
scenarios file; any format ``--trace`` reads), its arrival times multiplied by ``time_scale`` (0.5: twice the
load), cut to the phase's duration and started at the phase's start. A trace's token ids are kept as they are (its
prefix structure is its own), so the same trace in two phases shares its prefixes.

Scenarios ship in ``config/scenarios.toml`` (``load_scenarios``); a file of the same shape can be passed instead.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schedctl.files import InputFileError, model_from_dict, read_toml
from schedctl.sim.profiles import config_dir
from schedctl.tokens import SYNTHETIC_TOKEN_BASE
from schedctl.workloads.registry import make_requests, parse_arrival, parse_rate, parse_workload
from schedctl.workloads.trace import read_trace, time_scaled
from schedctl.workloads.types import Request

_SHARED_NS_SHIFT = 44  # shared ids of namespace n live at n << 44 (above every other id in the engine)
_UNIQUE_SLOT_SHIFT = 34  # unique ids of slot s live at base + s << 34 (the engine's own outputs start at 2**40)
MAX_SLOTS = (1 << (40 - _UNIQUE_SLOT_SHIFT)) - 1


class Stream(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    workload: str | None = Field(None, description="command-line form, e.g. gsp:num_groups=256,system_prompt_len=4096")
    rate: str | None = Field(None, description="req/s, or a schedule: steps:0=2,60=8 | ramp:... | diurnal:... | "
                             "bursts:...")
    arrival: str = "poisson"
    trace: str | None = Field(None, description="or: a trace file to replay (relative to the scenarios file)")
    time_scale: float = Field(1.0, gt=0, allow_inf_nan=False, description="a trace's arrival times are multiplied "
                              "by this (0.5: twice the load)")

    @model_validator(mode="after")
    def _one_source(self) -> Stream:
        if self.trace is not None:
            if self.workload is not None or self.rate is not None:
                raise ValueError("a stream replays a trace or generates a workload at a rate: give trace, or "
                                 "workload and rate")
        elif self.workload is None or self.rate is None:
            raise ValueError("give workload and rate (or trace)")
        elif self.time_scale != 1.0:
            raise ValueError("time_scale is for a trace (a workload's load is its rate)")
        return self

    @field_validator("rate", mode="before")
    @classmethod
    def _number(cls, v: object) -> object:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("workload")
    @classmethod
    def _check_workload(cls, v: str | None) -> str | None:
        if v is not None:
            parse_workload(v)
        return v

    @field_validator("rate")
    @classmethod
    def _check_rate(cls, v: str | None) -> str | None:
        if v is not None:
            parse_rate(v)
        return v

    @field_validator("arrival")
    @classmethod
    def _check_arrival(cls, v: str) -> str:
        parse_arrival(v)
        return v


class Phase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    duration_s: float = Field(gt=0, allow_inf_nan=False)
    streams: list[Stream] = Field(min_length=1)
    label: str = ""


class Scenario(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = ""
    description: str = ""
    kind: Literal["stationary", "non-stationary"] = "non-stationary"
    in_bench: bool = Field(default=True, description="part of `schedctl bench adaptive --scenarios all`")
    phases: list[Phase] = Field(min_length=1)

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)

    @property
    def seeded(self) -> bool:
        """Whether the seed changes the requests (false when every stream replays a trace)."""
        return any(s.trace is None for p in self.phases for s in p.streams)

    def phase_starts_s(self) -> list[float]:
        return [float(x) for x in np.cumsum([0.0] + [p.duration_s for p in self.phases])[:-1]]


class ScenarioFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    scenarios: dict[str, Scenario]


def _stream_seed(seed: int, phase: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, phase, stream]).generate_state(1)[0])


def _remap(tokens: array[int], shared_offset: int, unique_offset: int) -> array[int]:
    a = np.frombuffer(tokens, dtype=np.int64).copy()
    shared = a < SYNTHETIC_TOKEN_BASE
    a[shared] += shared_offset
    a[~shared] += unique_offset
    out = array("q")
    out.frombytes(a.tobytes())
    return out


def _trace_requests(stream: Stream, start_s: float, duration_s: float) -> Iterator[Request]:
    assert stream.trace is not None
    for r in time_scaled(read_trace(stream.trace), stream.time_scale):
        if r.arrival_s >= duration_s:
            return
        yield dataclasses.replace(r, arrival_s=start_s + r.arrival_s)


def _stream_requests(
    stream: Stream, start_s: float, duration_s: float, seed: int, namespace: int, slot: int
) -> Iterator[Request]:
    if stream.trace is not None:
        yield from _trace_requests(stream, start_s, duration_s)
        return
    assert stream.workload is not None and stream.rate is not None
    shared_off, unique_off = namespace << _SHARED_NS_SHIFT, slot << _UNIQUE_SLOT_SHIFT
    for r in make_requests(stream.workload, stream.rate, stream.arrival, duration_s=duration_s, seed=seed):
        prompt, outputs = r.prompt, r.output_tokens
        if shared_off or unique_off:
            prompt = _remap(prompt, shared_off, unique_off)
            outputs = _remap(outputs, shared_off, unique_off) if outputs is not None else None
        yield Request(r.request_id, start_s + r.arrival_s, prompt, r.output_len, outputs, r.session_id, r.group_id,
                      r.slo_class)


def scenario_requests(scenario: Scenario, seed: int = 0) -> Iterator[Request]:
    """The scenario's requests in arrival order (lazily), request ids 0, 1, 2, ..."""
    namespaces: dict[str, int] = {}
    streams: list[Iterator[Request]] = []
    slot = 0
    for p_idx, (phase, start) in enumerate(zip(scenario.phases, scenario.phase_starts_s(), strict=True)):
        for s_idx, stream in enumerate(phase.streams):
            ns = namespaces.setdefault(stream.workload or "", len(namespaces))
            if slot > MAX_SLOTS:
                raise ValueError(f"scenario {scenario.name!r}: more than {MAX_SLOTS + 1} streams")
            streams.append(_stream_requests(stream, start, phase.duration_s, _stream_seed(seed, p_idx, s_idx), ns,
                                            slot))
            slot += 1
    for rid, req in enumerate(heapq.merge(*streams, key=lambda r: r.arrival_s)):
        req.request_id = rid
        yield req


def default_scenarios_path() -> Path:
    return config_dir() / "scenarios.toml"


def load_scenarios(path: str | os.PathLike[str] | None = None) -> dict[str, Scenario]:
    """Every scenario of a scenarios file (default: config/scenarios.toml), by name, in file order."""
    file = Path(path) if path is not None else default_scenarios_path()
    data = read_toml(file)
    parsed = model_from_dict(ScenarioFile, data, file)
    return {name: _resolve_traces(file, name, sc).model_copy(update={"name": name})
            for name, sc in parsed.scenarios.items()}


def _resolve_traces(file: Path, name: str, sc: Scenario) -> Scenario:
    """Trace paths made relative to the scenarios file's folder; a missing trace names its field."""
    phases = []
    for i, phase in enumerate(sc.phases):
        streams = []
        for j, stream in enumerate(phase.streams):
            if stream.trace is not None:
                path = Path(stream.trace).expanduser()
                path = path if path.is_absolute() else file.parent / path
                if not path.is_file():
                    raise InputFileError(file, f"scenarios.{name}.phases[{i}].streams[{j}].trace",
                                         f"no such file {path}")
                stream = stream.model_copy(update={"trace": str(path)})
            streams.append(stream)
        phases.append(phase.model_copy(update={"streams": streams}))
    return sc.model_copy(update={"phases": phases})


def get_scenario(name: str, path: str | os.PathLike[str] | None = None) -> Scenario:
    scenarios = load_scenarios(path)
    if name not in scenarios:
        file = path if path is not None else default_scenarios_path()
        raise InputFileError(file, name, f"no such scenario (known: {', '.join(scenarios)})")
    return scenarios[name]
