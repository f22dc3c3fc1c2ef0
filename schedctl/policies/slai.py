"""SLAI's per-iteration rules, and Sarathi-Serve's, as pure functions over small request views.

SLAI (SLO-Aware LLM Inference; Bari, Hegde, de Veciana, "Optimal Scheduling Algorithms for LLM Inference:
Theory and Practice", arXiv 2508.01002; REFERENCES §2). Every iteration forms one batch under a token budget B:

1. Every running decode j has a deadline ``d_j = (end of the batch that gave j its last token) + TBT_j`` and a
   last schedulable time ``LST_j = d_j - tbt_slack_s - Θ · (mean batch duration)``. Decodes whose LST has passed
   are critical; they go first, in LST order, one token each, up to ``min(decode_cap, B)``.
2. Partial prefills continue, each chunk = min(prompt left, budget left).
3. New prefills from the waiting queue, shortest prompt first (or FCFS; optionally strict-TBT requests first),
   until the budget, memory or ``max_running_requests`` stops admission.
4. Leftover budget goes to the non-critical decodes in LST order, up to ``decode_cap`` decodes in all.

Θ is dynamic: ``theta_low`` while KV-cache utilisation is below ``memory_limit``, ``theta_high`` at or above.
The mean batch duration is the running mean over every batch the engine has run (as in the authors' code).

One deliberate difference from the authors' code (github.com/agrimUT/SLAI, ``slai_scheduler.py``): there the LST
of a decode is computed once, at the end of the batch that gave it its last token, with that moment's Θ and mean;
here it is evaluated at the start of every iteration with the current Θ, mean and knobs. For every decode that
ran in the previous batch (nearly all of them) the two are identical; for one left out it differs only through the
drift of Θ and the mean. What it buys: a retuned Θ or TBT slack (the sidecar's DeadlineTuner) takes effect at the
next iteration. Since ``LST_j <= now`` is ``d_j <= now + Θ·mean + slack`` and Θ·mean + slack is common to all
decodes, LST order is deadline order, and the critical decodes are a prefix of the decodes sorted by deadline.

Sarathi-Serve (Agrawal et al., OSDI 2024), the SLAI paper's baseline: every running decode every iteration (no
decode is ever left out: stall-free), then partial and new prefill chunks in FCFS order fill the rest of the budget.

Why hand-written: no serving library implements SLAI or RAD. The authors' prototype is a fork of Sarathi-Serve's
research code tied to its GPU workers, and Vidur (the Sarathi authors' simulator) has Sarathi's scheduler but no
prefix cache and no SLO-aware batching; the rules are a few lines each, so they are written here once, engine-
agnostic, and the simulator (``sim/hybrid.py``) applies them. Memory, admission and chunk bookkeeping stay the
engine's.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from schedctl.policies.spec import SLAISpec

TBT_CLASSES = ("strict", "relaxed", "default")
_CLASS_RANK = {"strict": 0, "relaxed": 1, "default": 1}


def tbt_slo_s(spec: SLAISpec, slo_class: str) -> float:
    """The TBT SLO of a request's class; an unknown class is refused with the classes SLAI knows."""
    if slo_class == "strict":
        return spec.tbt_strict_s
    if slo_class == "relaxed":
        return spec.tbt_relaxed_s
    if slo_class == "default":
        return spec.tbt_default_s
    raise ValueError(f"slo_class {slo_class!r} is not a TBT class SLAI knows ({', '.join(TBT_CLASSES)})")


def theta(spec: SLAISpec, kv_utilization: float) -> float:
    """Θ: ``theta_low`` while KV utilisation is below ``memory_limit``, ``theta_high`` at or above it."""
    return spec.theta_high if kv_utilization >= spec.memory_limit else spec.theta_low


def last_schedulable_s(deadline_s: float, theta_value: float, mean_batch_s: float, slack_s: float = 0.0) -> float:
    """LST = deadline - slack - Θ · mean batch duration (deadline = last token's batch end + TBT SLO)."""
    return deadline_s - slack_s - theta_value * mean_batch_s


def critical_before_s(spec: SLAISpec, now_s: float, kv_utilization: float, mean_batch_s: float) -> float:
    """A decode is critical now iff its deadline is at or before this time (``LST <= now``)."""
    return now_s + theta(spec, kv_utilization) * mean_batch_s + spec.tbt_slack_s


def critical_count(deadlines_sorted_s: Sequence[float], before_s: float, limit: int) -> int:
    """How many decodes (sorted by deadline) go first as critical: those due by ``before_s``, at most ``limit``."""
    return min(bisect_right(deadlines_sorted_s, before_s), max(limit, 0))


def leftover_decodes(n_decodes: int, n_critical: int, budget_left: int, decode_cap: int) -> int:
    """Non-critical decodes that get a token: the leftover budget, up to ``decode_cap`` decodes in all."""
    return max(0, min(n_decodes - n_critical, budget_left, decode_cap - n_critical))


def prefill_key(
    order: str, strict_first: bool, prompt_tokens: int, slo_class: str, seq: int, retracted: bool
) -> tuple[int, int, int, int]:
    """Sort key of a waiting prefill (smaller goes first).

    ``order``: "spf" (shortest prompt first; the paper's "known prompt lengths": the whole prompt, not what the
    prefix cache leaves) or "fcfs" (arrival order, ``seq``). Requests retracted by the engine for memory go before
    new arrivals, as a preempted request does in vLLM/Sarathi; among themselves in the same order.
    """
    rank = _CLASS_RANK.get(slo_class, 1) if strict_first else 0
    length = prompt_tokens if order == "spf" else 0
    return (0 if retracted else 1, rank, length, seq)


def with_theta(spec: SLAISpec, theta_low: float) -> SLAISpec:
    """The spec with Θ below the memory limit set to ``theta_low``, Θ above it moved by the same amount.

    One of the two knobs the DeadlineTuner may drive (larger Θ: decodes turn critical earlier, TBT down, TTFT up).
    Validated like any spec: a negative or non-finite Θ raises pydantic.ValidationError naming ``theta_low``.
    """
    shift = theta_low - spec.theta_low
    return SLAISpec.model_validate(
        {**spec.model_dump(), "theta_low": theta_low, "theta_high": max(0.0, spec.theta_high + shift)}
    )


def with_tbt_slack(spec: SLAISpec, tbt_slack_s: float) -> SLAISpec:
    """The spec with ``tbt_slack_s`` set (the other DeadlineTuner knob: same direction as Θ, in seconds)."""
    return SLAISpec.model_validate({**spec.model_dump(), "tbt_slack_s": tbt_slack_s})
