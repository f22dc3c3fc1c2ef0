"""The objective: turn one observation window into a reward in [0, 1] against the SLO targets, or into no reward.

A window earns a reward only when it can be trusted:

* it is fresh (``stale`` is false), its duration is positive, and every figure it carries is finite;
* at least ``min_samples`` requests got their first token in it (a P99 of five samples is noise, not signal);
* the order mattered: a window that ends with an empty queue (``idle_queue_len``) and a tail within the target
  is *idle* — every order would have served it the same, so it says nothing about the policy (crediting it
  would reward whichever arm happened to run in a quiet spell).

Otherwise :func:`evaluate` returns a :class:`Score` with ``reward=None`` and the reason, and nothing reaches a
learner. The reward itself (all figures in seconds)::

    tail_s      = max(window P99 TTFT, age of the oldest request still waiting)   # starvation counts at once
    attainment  = share of the window's TTFTs <= ttft_target_s
    tail_score  = 1 - ln(max(tail_s / ttft_target_s, 1)) / ln(tail_ratio_zero)    clipped to [0, 1]
    reward      = attainment_weight * attainment + (1 - attainment_weight) * tail_score

A tail at or below the target scores 1, ten times the target scores 0.5 (with ``tail_ratio_zero`` = 100) and
``tail_ratio_zero`` times the target scores 0: the log keeps a difference between "20 s" and "40 s" visible when
both are far above a 2 s target, where a linear or reciprocal score would flatten it. Counting the oldest
waiting request in the tail matters for LPM-like orders, whose starved requests would otherwise enter the
samples only after they are finally served.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from schedctl.engine_adapter.base import Observation


class ObjectiveParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    ttft_target_s: float = Field(default=2.0, gt=0, le=3600, description="TTFT SLO: the P99 to hold")
    tail_quantile: float = Field(default=0.99, gt=0, lt=1, description="the tail the SLO is about")
    min_samples: int = Field(default=20, ge=1, le=1_000_000, description="first tokens a window needs to earn a reward")
    attainment_weight: float = Field(default=0.3, ge=0, le=1, description="weight of attainment vs tail score")
    tail_ratio_zero: float = Field(default=100.0, gt=1, le=1e6, description="tail / target ratio that scores 0")
    count_oldest_waiting: bool = Field(default=True, description="count the oldest waiting request's age as tail")
    pool_max_windows: int = Field(
        default=6, ge=1, le=1000, description="thin windows (fewer than min_samples) of one policy merged until "
        "together they have min_samples first tokens, at most this many (1: no pooling; controller/pooling.py)"
    )
    idle_queue_len: int = Field(
        default=0, ge=-1, le=1_000_000, description="a window ending with at most this many waiting and its tail "
        "within the target is idle: the order had no choice to make (-1: never idle)"
    )


class Score(BaseModel):
    """What the objective made of one window (``reward`` None: the window is not evidence)."""

    model_config = ConfigDict(frozen=True)

    reward: float | None
    why_none: str | None = None
    samples: float = 0.0
    ttft_p50_s: float | None = None
    ttft_tail_s: float | None = None  # window's TTFT quantile (tail_quantile)
    tail_s: float | None = None  # the tail the reward used (with the oldest waiting request)
    attainment: float | None = None
    idle: bool = False  # the queue was (nearly) empty and the SLO met: no evidence about the order
    thin: bool = False  # a valid window with fewer than min_samples first tokens (the controller may pool it)


def _finite(x: float | None) -> bool:
    return x is None or math.isfinite(x)


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def tail_score(tail_s: float, p: ObjectiveParams) -> float:
    ratio = max(tail_s / p.ttft_target_s, 1.0)
    return min(1.0, max(0.0, 1.0 - math.log(ratio) / math.log(p.tail_ratio_zero)))


def evaluate(obs: Observation, p: ObjectiveParams) -> Score:
    """The reward of one window, or ``reward=None`` with the reason it is not evidence."""
    if obs.stale:
        return Score(reward=None, why_none=f"stale: {obs.stale_reason or 'no fresh data'}")
    if not (math.isfinite(obs.start_s) and math.isfinite(obs.end_s)) or obs.duration_s <= 0:
        return Score(reward=None, why_none="empty window (no duration)")
    if not all(_finite(v) for v in (obs.cache_hit_rate, obs.kv_utilization, obs.oldest_wait_s)):
        return Score(reward=None, why_none="non-finite gauge in the window")
    dist = obs.ttft
    samples = dist.count
    if not math.isfinite(samples) or samples < p.min_samples:
        return Score(reward=None, why_none=f"too few samples ({samples:g} < {p.min_samples})", samples=samples,
                     thin=math.isfinite(samples))
    if dist.samples_s and not all(math.isfinite(v) and v >= 0 for v in dist.samples_s):
        return Score(reward=None, why_none="non-finite or negative TTFT sample", samples=samples)
    q_tail = dist.quantile(p.tail_quantile)
    q50 = dist.quantile(0.5)
    attainment = dist.fraction_at_most(p.ttft_target_s)
    if not (math.isfinite(q_tail) and math.isfinite(attainment) and math.isfinite(q50)):
        return Score(reward=None, why_none="TTFT distribution gives no finite quantile", samples=samples)
    tail = q_tail
    if p.count_oldest_waiting and obs.oldest_wait_s is not None:
        tail = max(tail, obs.oldest_wait_s)
    if obs.queue_len <= p.idle_queue_len and tail <= p.ttft_target_s:
        return Score(reward=None, why_none="idle window: nothing waited, the SLO was met", samples=samples,
                     ttft_p50_s=_num(q50), ttft_tail_s=_num(q_tail), tail_s=_num(tail), attainment=attainment,
                     idle=True)
    reward = p.attainment_weight * attainment + (1.0 - p.attainment_weight) * tail_score(tail, p)
    return Score(
        reward=min(1.0, max(0.0, reward)), samples=samples, ttft_p50_s=_num(q50), ttft_tail_s=_num(q_tail),
        tail_s=_num(tail), attainment=attainment,
    )
