"""What-if replay: the counterfactual reward of each candidate k, from the same start state, as evidence for the bandit.

Why. A live window's reward mixes the running policy's effect with the backlog it inherited from the windows
before: under a sustained overload every arm looks bad, and the arm that runs after a bad one looks worse than
it is. A replay separates the two. The shell keeps the engine's state at the start of each window; at the end of
the window it re-runs that state, with the window's own arrivals, under each candidate k on the embedded engine.
Every arm then faces the same queue, the same cache and the same arrivals, so the differences between their
rewards are the policy's alone.

Division of labour (the core stays pure):

* the shell (``service.py``) asks :meth:`WhatIf.arms_to_replay` which arms to replay, calls a :class:`Replayer`
  (``begin_window`` before ``observe()``, ``replay`` after) and hands the :class:`ReplayReport` to
  ``Controller.step``; a failing replayer becomes a report with an ``error`` and no counterfactuals;
* the replayer (``engine_adapter/replay.py`` for the embedded engine) runs the counterfactual windows and
  returns one ``Observation`` per arm — it never scores them;
* the core scores each counterfactual window with the live objective (``objective.evaluate``, the same reward
  formula and parameters) and uses the scores per :class:`WhatIfParams` ``mode``:

  - ``prior``: the counterfactual rewards are credited to the KTuner (its learner and its per-context arm
    estimates) as evidence of those arms, every replayed tick. The running arm is credited with its replay
    reward too, in place of its live one, so that every arm's evidence covers the same span from the same state
    (on the embedded engine, with one window replayed, the two are the same number: the replay reproduces the
    live window exactly; the difference is logged as ``fidelity``). Arms never run in a context start with an
    estimate, and the estimates of all arms move together, window by window, from comparable evidence. Without
    a usable replay on a tick the live reward is credited as usual.
  - ``filter``: the learner learns from live rewards only, as without replay; an exploration of an arm whose
    running mean of replay rewards in this context trails the best replayed arm's by more than
    ``filter_margin_reward`` is refused (the guard holds).

Evidence gates. The objective's gates are about a window, and every arm replayed the same window: the replayed
set is evidence when at least one arm's window has ``min_samples`` first tokens and not every arm's window is
idle (queue at most ``idle_queue_len`` and tail within the target — then the order made no difference). Each
arm is then scored with those two gates off (an arm that would have emptied the queue earns its full reward).

Every decision made with a replay carries a :class:`WhatIfRecord`: which arms were replayed, their rewards and
tails, the best, which were credited or which exploration was refused, the skipped arms (over the time budget),
the span replayed and its start state, the wall time, and any error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schedctl.controller.ktuner import ArmStats, KTuner, arm_label, arm_steps
from schedctl.controller.objective import ObjectiveParams, Score, evaluate
from schedctl.engine_adapter.base import Counterfactual, Observation, ReplayReport
from schedctl.policies.arms import ArmValue, check_arm

WhatIfMode = Literal["prior", "filter"]


class WhatIfParams(BaseModel):
    """The ``[whatif]`` settings (off by default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=False, description="replay the recent window under candidate arms each tick")
    mode: WhatIfMode = Field(default="prior", description="prior: credit replay rewards; filter: veto explorations")
    arms: Literal["all", "neighbours"] | list[ArmValue] = Field(
        default="all", description='arms to replay: "all" tuner arms, "neighbours" of the running arm, or a list'
    )
    every_ticks: int = Field(default=1, ge=1, le=1_000_000, description="replay on every N-th tick")
    horizon_windows: int = Field(default=2, ge=1, le=1000, description="windows replayed: from the state N windows ago")
    filter_margin_reward: float = Field(default=0.05, ge=0, le=1, description="filter: how far behind is clearly")
    budget_ms: float = Field(default=0.0, ge=0, le=3_600_000, allow_inf_nan=False,
                             description="wall ms a tick's replays may take (0: no limit)")

    @field_validator("arms", mode="before")
    @classmethod
    def _parse_arms(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [check_arm(a) for a in v]
        return v


# -- what the decision log records --------------------------------------------------------------------------------
class ArmScore(BaseModel):
    model_config = ConfigDict(frozen=True, ser_json_inf_nan="null")

    reward: float | None = None
    why_none: str | None = None
    tail_s: float | None = None
    ttft_p99_s: float | None = None
    attainment: float | None = None
    samples: float = 0.0
    queue_len: int | None = None
    idle: bool = False
    wall_ms: float = 0.0


class WhatIfRecord(BaseModel):
    """The replay of one tick, as the decision log shows it."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="null")

    mode: WhatIfMode
    start_s: float | None = None
    end_s: float | None = None
    windows: int = 0
    state: dict[str, float] = Field(default_factory=dict)
    scores: dict[str, ArmScore] = Field(default_factory=dict)  # arm label -> its counterfactual score
    evidence: bool = False  # the replayed set passed the window's gates (samples, not all idle)
    why_not_evidence: str | None = None
    best: str | None = None  # the arm with the highest counterfactual reward this tick
    credited: list[str] = Field(default_factory=list)  # prior: arms whose replay reward reached the learner
    vetoed: str | None = None  # filter: the exploration refused this tick
    fidelity: float | None = None  # replay reward of the running arm minus its live reward
    skipped: list[str] = Field(default_factory=list)
    error: str | None = None
    wall_ms: float = 0.0


def _score(cf: Counterfactual, params: ObjectiveParams, gates_off: ObjectiveParams) -> ArmScore:
    if cf.observation is None:
        return ArmScore(why_none=f"replay failed: {cf.error or 'no window'}", wall_ms=cf.wall_ms)
    obs = cf.observation
    s: Score = evaluate(obs, gates_off)
    idle = s.tail_s is not None and obs.queue_len <= params.idle_queue_len and s.tail_s <= params.ttft_target_s
    return ArmScore(reward=s.reward, why_none=s.why_none, tail_s=s.tail_s, ttft_p99_s=s.ttft_tail_s,
                    attainment=s.attainment, samples=s.samples, queue_len=obs.queue_len, idle=idle,
                    wall_ms=cf.wall_ms)


class WhatIf:
    """The core's side of the replay: which arms to ask for, scoring, crediting, vetoing. No clock, no I/O."""

    def __init__(self, params: WhatIfParams, objective: ObjectiveParams, estimate_weight: float) -> None:
        self.params = params
        self.objective = objective
        self._gates_off = objective.model_copy(update={"min_samples": 1, "idle_queue_len": -1})
        self.estimate_weight = estimate_weight
        self.stats: dict[str, dict[str, ArmStats]] = {}  # context label -> arm label -> replay rewards

    def arms_to_replay(self, running: ArmValue | None, arms: Sequence[ArmValue]) -> list[ArmValue]:
        """The arms to replay, the running one first, then outward from it (what a budget cuts last is farthest).

        Distance is ``ktuner.arm_steps``: along an axis (k, lpm-aging's N), and one step to any other family, so
        "neighbours" of klpm:4 in ``[fcfs, klpm:4, lpm, hrrn]`` are fcfs, lpm and hrrn."""
        p = self.params
        chosen = [a for a in arms if a in p.arms] if isinstance(p.arms, list) else list(arms)
        if running is None or running not in arms:
            return chosen if p.arms != "neighbours" else []
        if p.arms == "neighbours":
            chosen = [a for a in arms if arm_steps(running, a, arms) <= 1]
        return sorted(chosen, key=lambda a: (arm_steps(running, a, arms), arms.index(a)))

    def score(self, report: ReplayReport) -> WhatIfRecord:
        """Score every counterfactual window with the live objective; decide whether the set is evidence."""
        scores = {arm_label(cf.arm): _score(cf, self.objective, self._gates_off) for cf in report.results}
        why = None
        if report.error is not None:
            why = f"replay failed: {report.error}"
        elif not scores:
            why = "no arm replayed"
        elif max(s.samples for s in scores.values()) < self.objective.min_samples:
            why = f"too few first tokens in the window (< {self.objective.min_samples})"
        elif all(s.idle for s in scores.values()):
            why = "idle under every arm: the order made no difference"
        rewarded = {a: s.reward for a, s in scores.items() if s.reward is not None}
        best = max(rewarded, key=lambda a: rewarded[a]) if why is None and rewarded else None
        return WhatIfRecord(
            mode=self.params.mode, start_s=report.start_s, end_s=report.end_s, windows=report.windows,
            state=report.state, scores=scores, evidence=why is None, why_not_evidence=why, best=best,
            skipped=[arm_label(a) for a in report.skipped], error=report.error, wall_ms=report.wall_ms,
        )

    def replaces_live(self, record: WhatIfRecord, running: ArmValue | None) -> bool:
        """``prior`` mode with a usable replay of the running arm: it is credited instead of the live reward."""
        if self.params.mode != "prior" or not record.evidence or running is None:
            return False
        own = record.scores.get(arm_label(running))
        return own is not None and own.reward is not None

    def learn(self, record: WhatIfRecord, report: ReplayReport, ktuner: KTuner, obs: Observation,
              running: ArmValue | None, live_reward: float | None) -> WhatIfRecord:
        """Keep the replay means per context; in ``prior`` mode credit the counterfactual rewards to the KTuner.

        ``obs`` is the live window (its load context is the one credited). In ``prior`` mode the caller credits
        the live reward only when :meth:`replaces_live` is false, i.e. when the running arm has no replay reward
        here, so no arm is credited twice.
        """
        fidelity = None
        if running is not None and live_reward is not None:
            own = record.scores.get(arm_label(running))
            if own is not None and own.reward is not None:
                fidelity = own.reward - live_reward
        if not record.evidence:
            return record.model_copy(update={"fidelity": fidelity})
        label = ktuner.context_label(obs)
        per = self.stats.setdefault(label, {})
        credited = []
        for cf in report.results:
            s = record.scores[arm_label(cf.arm)]
            if s.reward is None or cf.arm not in ktuner.arms:
                continue
            st = per.setdefault(arm_label(cf.arm), ArmStats())
            st.count += 1
            st.mean += (s.reward - st.mean) * max(1.0 / st.count, self.estimate_weight)
            if self.params.mode == "prior":
                ktuner.update(cf.arm, s.reward, obs)
                credited.append(arm_label(cf.arm))
        return record.model_copy(update={"credited": credited, "fidelity": fidelity})

    def veto(self, label: str, target: ArmValue) -> str | None:
        """``filter`` mode: why an exploration of ``target`` is refused in context ``label`` (None: allowed)."""
        if self.params.mode != "filter":
            return None
        per = self.stats.get(label, {})
        mine = per.get(arm_label(target))
        if mine is None or not per:
            return None
        best_label, best = max(per.items(), key=lambda kv: kv[1].mean)
        if mine.mean < best.mean - self.params.filter_margin_reward:
            return (f"what-if: {arm_label(target)} replays at {mine.mean:.3f}, {best_label} at {best.mean:.3f} "
                    f"(margin {self.params.filter_margin_reward:g})")
        return None

    def summary(self, label: str) -> dict[str, dict[str, float]]:
        return {a: {"n": s.count, "mean": round(s.mean, 4)} for a, s in self.stats.get(label, {}).items()}
