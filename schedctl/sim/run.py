"""One simulation run: build the engine for a GPU and model, serve a request stream, summarise it."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict

from schedctl.policies.spec import PolicySpec, policy_label
from schedctl.sim.engine import EngineConfig, SimEngine
from schedctl.sim.profiles import GPUProfile, ModelProfile, kv_capacity_tokens
from schedctl.sim.records import ServingSummary, TBTHistogram, serving_figures
from schedctl.sim.step_time import StepTimeModel, StepTimeProfile
from schedctl.workloads.types import Request


class Hardware(BaseModel):
    """What the engine runs on: a GPU, a model, and optionally a fitted step-time profile and a KV size."""

    model_config = ConfigDict(frozen=True)

    gpu: GPUProfile
    model: ModelProfile
    step_profile: StepTimeProfile | None = None  # None: from the datasheets
    kv_capacity_tokens: int | None = None  # None: what fits beside the weights

    def step_model(self) -> StepTimeModel:
        return StepTimeModel(self.step_profile or StepTimeProfile.from_datasheet(self.gpu, self.model))

    def kv_tokens(self) -> int:
        return self.kv_capacity_tokens or kv_capacity_tokens(self.gpu, self.model)


class SimSummary(ServingSummary):
    """The figures of one run; field names are the JSON that `schedctl simulate --json` prints (the latency and
    throughput fields are ServingSummary's, shared with `schedctl load`)."""

    policy: str
    rate: float | None = None
    seed: int | None = None
    aborted: int
    unfinished: int
    sim_duration_s: float
    retractions: int
    prefill_steps: int
    decode_steps: int
    warmup_s: float = 0.0  # requests arriving before this are left out of the latency, throughput and cache figures
    warmup_excluded: int = 0  # finished requests left out as warm-up


def new_engine(hw: Hardware, policy: PolicySpec, config: EngineConfig | None = None) -> SimEngine:
    """An engine for ``hw``; the GPU's tile width goes to the engine unless the config sets one (RAD's tiling)."""
    cfg = config or EngineConfig()
    if cfg.tile_tokens is None:
        cfg = cfg.model_copy(update={"tile_tokens": hw.gpu.tile_tokens})
    return SimEngine(cfg, hw.step_model(), hw.kv_tokens(), policy)


def summarize(engine: SimEngine, rate: float | None = None, seed: int | None = None,
              warmup_s: float = 0.0) -> SimSummary:
    """The run's figures; with ``warmup_s`` > 0, requests that arrived before it are left out of every latency,
    throughput and cache figure, as `schedctl load --warmup-s` does (the TBT gaps then come from per-request
    token times: the engine must record them, ``EngineConfig.record_token_times``)."""
    log = engine.completed
    arrival = log.column("arrival_s")
    keep = arrival >= warmup_s
    n = int(keep.sum())
    finish = log.column("finish_s")[keep]
    span = float(finish.max() - arrival[keep].min()) if n else 0.0
    if warmup_s > 0:
        if log.token_times is None:
            raise ValueError("a warm-up needs per-request token times: EngineConfig(record_token_times=True)")
        tbt: TBTHistogram | list[float] = [g for i in np.flatnonzero(keep) for g in log.row(int(i)).tbt_s()]
        cached: int | None = int(log.column("cached_tokens")[keep].sum())
        prompt = int(log.column("prompt_tokens")[keep].sum())
    else:  # the whole run: the engine's own counters (also for requests still unfinished)
        tbt, cached, prompt = engine.tbt, engine.cache.hit_tokens, engine.cache.lookup_tokens
    figures = serving_figures(requests=n, ttft_s=log.ttft_s()[keep], tbt=tbt, span_s=span,
                              output_tokens=int(log.column("output_tokens")[keep].sum()), cached_tokens=cached,
                              prompt_tokens=prompt)
    if not prompt:
        figures["cache_hit_rate"] = 0.0  # the simulator's convention for a run without lookups
    return SimSummary(
        policy=policy_label(engine.policy), rate=rate, seed=seed, aborted=len(engine.aborted),
        unfinished=engine.arrivals - len(log) - len(engine.aborted), sim_duration_s=engine.now_s,
        retractions=engine.retractions, prefill_steps=engine.prefill_steps, decode_steps=engine.decode_steps,
        warmup_s=warmup_s, warmup_excluded=len(log) - n, **figures,
    )


def simulate(
    requests: Iterable[Request], policy: PolicySpec, hw: Hardware, config: EngineConfig | None = None,
    on_event: Callable[[SimEngine], None] | None = None, rate: float | None = None, seed: int | None = None,
    warmup_s: float = 0.0,
) -> tuple[SimEngine, SimSummary]:
    """Serve ``requests`` (sorted by arrival) to completion under ``policy``; returns the engine and summary
    (requests arriving in the first ``warmup_s`` seconds left out of its figures)."""
    if warmup_s < 0:
        raise ValueError(f"warmup_s must be >= 0, got {warmup_s}")
    if warmup_s > 0:
        config = (config or EngineConfig()).model_copy(update={"record_token_times": True})
    engine = new_engine(hw, policy, config)
    engine.add_requests(requests)
    engine.run(on_event=on_event)
    return engine, summarize(engine, rate=rate, seed=seed, warmup_s=warmup_s)
