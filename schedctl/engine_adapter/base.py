"""The engine-adapter protocol: what the controller may ask of an engine, and what it gets back.

The controller depends on this module alone of ``engine_adapter``: the protocol, the ``Observation`` of one
window, the capabilities, and the typed errors the shell turns into guard actions. Concrete adapters (the
embedded simulator, SGLang) live beside it and are built by the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from schedctl.policies.arms import ArmValue
from schedctl.policies.spec import PolicySpec
from schedctl.stats import LatencyDist


class EngineError(Exception):
    """Base of the errors an adapter raises; anything else escaping an adapter is a bug."""


class EngineUnavailable(EngineError):
    """The engine did not answer (refused, timed out, or answered garbage) — hold, then fall back."""


class UnsupportedPolicy(EngineError):
    """The engine cannot run this PolicySpec (unknown kind, or a knob it lacks)."""


class Capabilities(BaseModel):
    model_config = ConfigDict(frozen=True)

    engine: str  # "sim", "sglang", ...
    policy_kinds: frozenset[str]  # PolicySpec kinds the engine accepts
    simulated: bool = False
    version: str | None = None  # engine software version, when known


class Observation(BaseModel):
    """One observation window of an engine. Times are seconds on the engine's clock (simulated or wall)."""

    model_config = ConfigDict(frozen=True)

    start_s: float
    end_s: float
    arrivals: int = Field(ge=0)
    completions: int = Field(ge=0)
    ttft: LatencyDist = Field(default_factory=LatencyDist)  # requests whose first token came in the window
    tbt: LatencyDist = Field(default_factory=LatencyDist)  # time between tokens in the window
    queue_len: int = Field(ge=0, default=0)  # waiting requests at the end of the window
    running: int = Field(ge=0, default=0)  # running requests at the end of the window
    cache_hit_rate: float | None = Field(default=None, ge=0.0, le=1.0)  # cached / prompt tokens admitted
    kv_utilization: float | None = Field(default=None, ge=0.0, le=1.0)
    prompt_tokens_mean: float | None = Field(default=None, ge=0.0)
    # age of the oldest request still waiting for its first token at the end of the window (None: unknown).
    # A starving request shows here long before it completes and enters the TTFT samples.
    oldest_wait_s: float | None = Field(default=None, ge=0.0)
    # requests the engine retracted (sent back to the queue for memory, their prefill wasted) in the window; None:
    # the engine does not say (SGLang: sglang:num_retracted_requests_total)
    retractions: int | None = Field(default=None, ge=0)
    # the schedule_conservativeness the engine reports it runs (None: unknown); the reserve tuner reconciles on it
    conservativeness: float | None = Field(default=None, gt=0)
    active_policy: PolicySpec | None = None
    # True when the engine reported which policy it runs: active_policy None then means "none of ours" (the
    # engine's own order, e.g. after a restart); False: active_policy None means unknown
    active_reported: bool = False
    engine_generation: int | None = None  # changes when the engine restarts
    reachable: bool = True  # False: the engine did not answer this tick (observe() failed), a push would not land
    stale: bool = False  # the adapter could not get fresh data for this window
    stale_reason: str | None = None

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def arrival_rate_rps(self) -> float:
        return self.arrivals / self.duration_s if self.duration_s > 0 else 0.0


@runtime_checkable
class EngineAdapter(Protocol):
    def capabilities(self) -> Capabilities:
        """What this engine is and which policies it accepts."""
        ...

    def observe(self) -> Observation:
        """The window since the previous call (raises EngineUnavailable when the engine does not answer)."""
        ...

    def apply(self, spec: PolicySpec) -> None:
        """Make ``spec`` the engine's policy (raises UnsupportedPolicy or EngineUnavailable)."""
        ...


@runtime_checkable
class ReserveKnob(Protocol):
    """An engine whose admission reserve (SGLang's ``schedule_conservativeness``) can change while it runs."""

    def set_conservativeness(self, value: float) -> dict[str, float]:
        """Set it (ValueError: out of range; UnsupportedPolicy, EngineUnavailable); returns the engine's readback:
        ``schedule_conservativeness`` and the shares (``new_token_ratio_init``, ``_min``, ``new_token_ratio``)."""
        ...


# -- what-if replay: what a replaying adapter hands the controller --------------------------------------------------
class Counterfactual(BaseModel):
    """One arm's replay: the window the engine would have produced under it (or why there is none)."""

    model_config = ConfigDict(frozen=True)

    arm: ArmValue
    observation: Observation | None = None
    error: str | None = None
    wall_ms: float = 0.0


class ReplayReport(BaseModel):
    """What a replayer returns for one tick."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="null")

    start_s: float | None = None  # the span replayed (engine clock)
    end_s: float | None = None
    windows: int = 0
    state: dict[str, float] = Field(default_factory=dict)  # the start state: waiting, running, cached tokens, ...
    results: list[Counterfactual] = Field(default_factory=list)
    skipped: list[ArmValue] = Field(default_factory=list)  # not replayed: the time budget ran out
    error: str | None = None  # the replayer failed as a whole (no counterfactuals)
    wall_ms: float = 0.0


@runtime_checkable
class Replayer(Protocol):
    """Runs counterfactual windows. Provided by the shell (it needs an engine); the core never calls it."""

    def begin_window(self) -> None:
        """Keep the engine's state now: the start of the window the next ``observe()`` returns."""
        ...

    def replay(self, arms: Sequence[ArmValue], budget_ms: float | None = None) -> ReplayReport:
        """Re-run the recent window(s) from their start state under each arm, in order, within the budget."""
        ...


def failed_report(error: str, wall_ms: float = 0.0) -> ReplayReport:
    """The report the shell hands the core when the replayer raised."""
    return ReplayReport(error=error, wall_ms=wall_ms)
