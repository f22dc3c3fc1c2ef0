"""Build a stand-in replica from the embedded engine's options (the ones `schedctl simulate` takes)."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI

from schedctl.policies.spec import PolicySpec, policy_label
from schedctl.sim.engine import EngineConfig
from schedctl.sim.paced import PacedEngine
from schedctl.sim.run import Hardware, new_engine
from schedctl.simserve.app import ReplicaInfo, SimServer, build_app


def replica_app(hw: Hardware, config: EngineConfig, policy: PolicySpec, time_scale: float,
                clock: Callable[[], float] = time.monotonic,
                stream_interval_s: float = 0.02) -> tuple[FastAPI, SimServer]:
    """The app and its server: ``policy`` is the order with the plugin off (SGLang's own --schedule-policy)."""
    engine = new_engine(hw, policy, config.model_copy(update={"stream_tokens": True}))
    info = ReplicaInfo(gpu=hw.gpu.name, model=hw.model.name, time_scale=time_scale, base_policy=policy_label(policy))
    server = SimServer(PacedEngine(engine), info, policy, clock=clock, stream_interval_s=stream_interval_s)
    return build_app(server), server
