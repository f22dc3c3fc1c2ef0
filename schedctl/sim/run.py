"""One simulation run: build the engine for a GPU and model, serve a request stream, summarise it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict

from schedctl.policies.spec import PolicySpec, policy_label
from schedctl.sim.engine import EngineConfig, SimEngine
from schedctl.sim.profiles import GPUProfile, ModelProfile, kv_capacity_tokens
from schedctl.sim.records import ServingSummary
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


def new_engine(hw: Hardware, policy: PolicySpec, config: EngineConfig | None = None) -> SimEngine:
    """An engine for ``hw``; the GPU's tile width goes to the engine unless the config sets one (RAD's tiling)."""
    cfg = config or EngineConfig()
    if cfg.tile_tokens is None:
        cfg = cfg.model_copy(update={"tile_tokens": hw.gpu.tile_tokens})
    return SimEngine(cfg, hw.step_model(), hw.kv_tokens(), policy)


def summarize(engine: SimEngine, rate: float | None = None, seed: int | None = None) -> SimSummary:
    log = engine.completed
    n = len(log)
    ttft = log.ttft_s()
    arrival = log.column("arrival_s")
    finish = log.column("finish_s")
    span = float(finish.max() - arrival.min()) if n else 0.0

    def q(p: float) -> float:
        return float(np.quantile(ttft, p)) if n else math.nan

    return SimSummary(
        policy=policy_label(engine.policy), rate=rate, seed=seed, requests=n, aborted=len(engine.aborted),
        unfinished=engine.arrivals - n - len(engine.aborted), sim_duration_s=engine.now_s,
        ttft_mean_s=float(ttft.mean()) if n else math.nan, ttft_p50_s=q(0.5), ttft_p90_s=q(0.9), ttft_p99_s=q(0.99),
        ttft_max_s=float(ttft.max()) if n else math.nan,
        tbt_p50_s=engine.tbt.quantile(0.5), tbt_p99_s=engine.tbt.quantile(0.99),
        throughput_rps=n / span if span > 0 else 0.0,
        output_tokens_per_s=float(log.column("output_tokens").sum()) / span if span > 0 else 0.0,
        cache_hit_rate=engine.cache.hit_rate, retractions=engine.retractions,
        prefill_steps=engine.prefill_steps, decode_steps=engine.decode_steps,
    )


def simulate(
    requests: Iterable[Request], policy: PolicySpec, hw: Hardware, config: EngineConfig | None = None,
    on_event: Callable[[SimEngine], None] | None = None, rate: float | None = None, seed: int | None = None,
) -> tuple[SimEngine, SimSummary]:
    """Serve ``requests`` (sorted by arrival) to completion under ``policy``; returns the engine and summary."""
    engine = new_engine(hw, policy, config)
    engine.add_requests(requests)
    engine.run(on_event=on_event)
    return engine, summarize(engine, rate=rate, seed=seed)
