"""Tuner arms: a queue policy as the tuner, the what-if replay and the decision log name it.

An arm is a k (an int, or ``"inf"`` for LPM) on the k axis (fcfs, klpm:K, lpm: what older settings, state files
and logs hold), or the label of any other queue policy (``"hrrn"``, ``"spf"``, ``"lpm-aging:64"``,
``"sglang:lpm"``), so one policy is one arm and a mixed arm set is a plain list.
"""

from __future__ import annotations

import math

from pydantic import ValidationError

from schedctl.policies.spec import (
    QUEUE_LABELS,
    KLPMSpec,
    check_k,
    parse_policy,
    queue_family,
    queue_label,
    shown,
)

ArmValue = int | str


def check_arm(v: object) -> ArmValue:
    """An arm as typed in settings: a k (``4``, ``"inf"``) or a queue-policy label (``"klpm:4"``, ``"hrrn"``,
    ``"lpm-aging:64"``). k-axis policies become their k (``"fcfs"`` -> 1, ``"lpm"`` -> ``"inf"``), others their
    label, so one policy is one arm. ValueError (one line) otherwise."""
    if isinstance(v, int) and not isinstance(v, bool):
        return check_k(v)
    if not isinstance(v, str):
        raise ValueError(f'an arm is a k (an integer >= 1 or "inf") or a queue policy ({QUEUE_LABELS}), '
                         f"got {shown(v)}")
    text = v.strip()
    if text.isdigit() or text.lower() in ("inf", "infinity", "∞"):
        return check_k(text)
    try:
        spec = parse_policy(text)
    except ValidationError as exc:
        raise ValueError(str(exc.errors()[0].get("msg", exc)).removeprefix("Value error, ")) from None
    except ValueError as exc:
        if str(exc).startswith("unknown policy"):
            raise ValueError(f'arm {text!r} is not a k (an integer >= 1 or "inf") or a queue policy '
                             f"({QUEUE_LABELS})") from None
        raise
    if not isinstance(spec, KLPMSpec):
        raise ValueError(f"arm {text!r}: the tuner's arms are queue policies ({QUEUE_LABELS}); {spec.kind} is not")
    return arm_of(spec)


def arm_of(spec: KLPMSpec) -> ArmValue:
    """The arm of a queue-ordering spec: its k on the k axis, its label otherwise."""
    if queue_family(spec) == "klpm":
        return "inf" if spec.k is None else spec.k
    return queue_label(spec)


def spec_for(arm: ArmValue) -> KLPMSpec:
    """The spec of an arm (a k, "inf", or a queue-policy label); the inverse of :func:`arm_of`."""
    if isinstance(arm, int):
        return KLPMSpec(k=arm)
    if arm == "inf":
        return KLPMSpec(k=None)
    spec = parse_policy(arm)
    assert isinstance(spec, KLPMSpec), arm
    return spec




def arm_axis(arm: ArmValue) -> tuple[str, float]:
    """(axis, position) of an arm: the k axis ``klpm`` by k ("inf" last), ``lpm-aging`` by N; any other policy
    is an axis of its own (its label), so ``sglang:lpm`` and ``sglang:fcfs`` are not steps of one axis."""
    if isinstance(arm, int) or arm == "inf":
        return "klpm", math.inf if arm == "inf" else float(arm)
    spec = spec_for(arm)
    if queue_family(spec) == "lpm-aging":
        return "lpm-aging", float(spec.aging_tokens_per_pass)
    return queue_label(spec), 0.0
