"""The control channel between the sidecar and the SGLang plugin: numbers through SGLang's /set_internal_state.

SGLang's ``POST /set_internal_state {"server_args": {...}}`` accepts numbers only (``SetInternalStateReq``:
``Dict[str, int | float]``), validates every key before applying any, and reaches every scheduler rank. The
plugin adds three keys to SGLang's handler table; the sidecar always sends all three in one request:

=========================  ==============================================================================
``schedctl_policy_kind``   0 = off (SGLang's own ``--schedule-policy`` order), 1 = fcfs, 2 = lpm, 3 = klpm,
                           4 = slai (SLAI's prefill order, the part of SLAI SGLang's scheduler allows),
                           5 = hrrn, 6 = spf, 7 = lpm-aging, 8 = sglang (SGLang's own order and 128 rule)
``schedctl_k``             klpm: k, an integer >= 1, or 0 meaning k = inf; slai: flags, +1 strict class
                           first, +2 FCFS instead of shortest prompt first; lpm-aging: N >= 1; sglang: which
                           order, 1 fcfs, 2 lpm, 3 hrrn, 4 spf; ignored by the other kinds
``schedctl_policy_version`` a positive integer the sidecar increments at every push (0 = nothing pushed)
=========================  ==============================================================================

SLAI on SGLang is its prefill order only: new prefills shortest prompt first (``policies/slai.prefill_key``,
the same rule the simulator applies), optionally strict-class requests first. SGLang forms its own decode
batches, so SLAI's decode criticality, Θ, TBT slack, token budget and caps cannot be applied: a spec that sets
any of them away from its default is refused (UnsupportedPolicy) rather than half-applied.

The plugin echoes them in ``GET /server_info`` under ``internal_states[i]["schedctl"]`` (one entry per DP rank),
so the sidecar sees what is active; a restarted engine answers version 0 and is noticed. Kind codes 9 and up are
reserved for later PolicySpec kinds: this plugin version rejects them, and :func:`encode_policy` raises
:class:`UnsupportedPolicy` for any kind it has no code for (sarathi, rad: hybrid batch formation).

This module imports nothing of SGLang: the adapter (outside the engine) and the plugin (inside) share it.
"""

from __future__ import annotations

from typing import Any

from schedctl.engine_adapter.base import UnsupportedPolicy
from schedctl.policies.spec import AGING_MAX, KLPMSpec, PolicySpec, SLAISpec, changed_knobs, queue_family

KEY_KIND = "schedctl_policy_kind"
KEY_K = "schedctl_k"
KEY_VERSION = "schedctl_policy_version"
KEYS = (KEY_KIND, KEY_K, KEY_VERSION)
SERVER_INFO_KEY = "schedctl"  # where the plugin's readback sits in each /server_info internal state

KIND_OFF = 0
KIND_FCFS = 1
KIND_LPM = 2
KIND_KLPM = 3
KIND_SLAI = 4
KIND_HRRN = 5
KIND_SPF = 6
KIND_LPM_AGING = 7
KIND_SGLANG = 8
KIND_CODES = {KIND_OFF: "off", KIND_FCFS: "fcfs", KIND_LPM: "lpm", KIND_KLPM: "klpm", KIND_SLAI: "slai",
              KIND_HRRN: "hrrn", KIND_SPF: "spf", KIND_LPM_AGING: "lpm-aging", KIND_SGLANG: "sglang"}
SGLANG_ORDERS = {1: "fcfs", 2: "lpm", 3: "hrrn", 4: "spf"}  # schedctl_k of kind sglang
K_INF = 0
SLAI_STRICT_FIRST = 1  # flags of kind slai, carried in schedctl_k
SLAI_FCFS_ORDER = 2
# the policies the plugin orders the queue by (PolicySpec kinds, the queue orders by family; capabilities() lists them)
SUPPORTED_KINDS = frozenset({"fcfs", "lpm", "klpm", "slai", "hrrn", "spf", "lpm-aging", "sglang"})
# kinds that order by SGLang's prefix matches: they need the server started with --schedule-policy lpm
# (sglang:fcfs, kind sglang with k 1, does not: needs_prefix_match)
PREFIX_MATCH_KINDS = frozenset({"lpm", "klpm", "hrrn", "spf", "lpm-aging", "sglang"})


def needs_prefix_match(kind: int, k: int) -> bool:
    """Whether channel numbers name an order that reads SGLang's prefix matches (server must run lpm)."""
    if kind == KIND_SGLANG:
        return k != 1
    return KIND_CODES.get(kind) in PREFIX_MATCH_KINDS
# the SLAI knobs SGLang's scheduler can apply; the others (decode batches are SGLang's own) must stay at defaults
SLAI_PREFILL_KNOBS = frozenset({"prefill_order", "strict_first"})


def as_int(value: Any, name: str, minimum: int = 0) -> int:
    """A channel number as an int: integral, not bool, at least ``minimum`` (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    n = int(value)
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def encode_policy(spec: PolicySpec | None, version: int) -> dict[str, int]:
    """The /set_internal_state ``server_args`` for ``spec`` (None: hand the order back to SGLang)."""
    if version < 1:
        raise ValueError(f"policy version must be >= 1, got {version}")
    if spec is None:
        kind, k = KIND_OFF, K_INF
    elif isinstance(spec, KLPMSpec):  # one spec, a code per family (the plugin's prefix-match check reads it)
        kind, k = _queue_code(spec)
    elif isinstance(spec, SLAISpec):
        unusable = sorted(set(changed_knobs(spec)) - SLAI_PREFILL_KNOBS)
        if unusable:
            raise UnsupportedPolicy(
                f"on SGLang, slai is its prefill order only (prefill_order, strict_first); SGLang forms its own "
                f"decode batches, so {', '.join(unusable)} cannot be applied"
            )
        kind = KIND_SLAI
        k = (SLAI_STRICT_FIRST if spec.strict_first else 0) + (SLAI_FCFS_ORDER if spec.prefill_order == "fcfs" else 0)
    else:  # sarathi, rad: hybrid batch formation, no code in this channel
        kind_name = getattr(spec, "kind", type(spec).__name__)
        raise UnsupportedPolicy(
            f"the SGLang plugin orders the waiting queue by {sorted(SUPPORTED_KINDS)} only, not {kind_name!r}"
        )
    return {KEY_KIND: kind, KEY_K: k, KEY_VERSION: version}


def _queue_code(spec: KLPMSpec) -> tuple[int, int]:
    family = queue_family(spec)
    if family == "sglang":
        order = "fcfs" if spec.k == 1 else spec.rank
        return KIND_SGLANG, next(code for code, name in SGLANG_ORDERS.items() if name == order)
    if family == "lpm-aging":
        return KIND_LPM_AGING, spec.aging_tokens_per_pass
    if family in ("hrrn", "spf"):
        return (KIND_HRRN if family == "hrrn" else KIND_SPF), K_INF
    return (KIND_FCFS, 1) if spec.k == 1 else ((KIND_LPM, K_INF) if spec.k is None else (KIND_KLPM, spec.k))


def decode_policy(kind: int, k: int) -> PolicySpec | None:
    """The PolicySpec for channel numbers (None for off); ValueError for codes this version does not know."""
    if kind == KIND_OFF:
        return None
    if kind in (KIND_FCFS, KIND_LPM, KIND_KLPM):
        return KLPMSpec(k=queue_k_of(kind, k))
    if kind in (KIND_HRRN, KIND_SPF):
        return KLPMSpec(k=None, rank="hrrn" if kind == KIND_HRRN else "spf")
    if kind == KIND_LPM_AGING:
        if not 1 <= k <= AGING_MAX:
            raise ValueError(f"lpm-aging N must be 1..{AGING_MAX}, got {k}")
        return KLPMSpec(k=None, aging_tokens_per_pass=k)
    if kind == KIND_SGLANG:
        order = SGLANG_ORDERS.get(k)
        if order is None:
            raise ValueError(f"sglang order must be one of {SGLANG_ORDERS}, got {k}")
        if order == "fcfs":
            return KLPMSpec(k=1, sglang=True)
        return KLPMSpec(k=None, rank=order, sglang=True)  # lpm, hrrn or spf
    if kind == KIND_SLAI:
        if k > SLAI_STRICT_FIRST + SLAI_FCFS_ORDER:
            raise ValueError(f"slai flags must be 0..3, got {k}")
        order = "fcfs" if k & SLAI_FCFS_ORDER else "spf"
        return SLAISpec(strict_first=bool(k & SLAI_STRICT_FIRST), prefill_order=order)
    raise ValueError(f"unknown {KEY_KIND} {kind}: this plugin knows {KIND_CODES}")


def queue_k_of(kind: int, k: int) -> int | None:
    """The k the shared k-LPM queue runs with for channel numbers (None = inf); kind must not be off."""
    if kind == KIND_FCFS:
        return 1
    if kind == KIND_LPM or (kind == KIND_KLPM and k == K_INF):
        return None
    if kind == KIND_KLPM:
        return k
    raise ValueError(f"kind {kind} does not order the queue")
