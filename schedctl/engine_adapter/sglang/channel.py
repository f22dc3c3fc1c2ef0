"""The control channel between the sidecar and the SGLang plugin: numbers through SGLang's /set_internal_state.

SGLang's ``POST /set_internal_state {"server_args": {...}}`` accepts numbers only (``SetInternalStateReq``:
``Dict[str, int | float]``), validates every key before applying any, and reaches every scheduler rank. The
plugin adds three keys to SGLang's handler table; the sidecar always sends all three in one request:

=========================  ==============================================================================
``schedctl_policy_kind``   0 = off (SGLang's own ``--schedule-policy`` order), 1 = fcfs, 2 = lpm, 3 = klpm,
                           4 = slai (SLAI's prefill order, the part of SLAI SGLang's scheduler allows)
``schedctl_k``             klpm: k, an integer >= 1, or 0 meaning k = inf; slai: flags, +1 strict class
                           first, +2 FCFS instead of shortest prompt first; ignored by the other kinds
``schedctl_policy_version`` a positive integer the sidecar increments at every push (0 = nothing pushed)
=========================  ==============================================================================

SLAI on SGLang is its prefill order only: new prefills shortest prompt first (``policies/slai.prefill_key``,
the same rule the simulator applies), optionally strict-class requests first. SGLang forms its own decode
batches, so SLAI's decode criticality, Θ, TBT slack, token budget and caps cannot be applied: a spec that sets
any of them away from its default is refused (UnsupportedPolicy) rather than half-applied.

The plugin echoes them in ``GET /server_info`` under ``internal_states[i]["schedctl"]`` (one entry per DP rank),
so the sidecar sees what is active; a restarted engine answers version 0 and is noticed. Kind codes 4 and up are
reserved for later PolicySpec kinds: this plugin version rejects them, and :func:`encode_policy` raises
:class:`UnsupportedPolicy` for any kind it has no code for (sarathi, rad: hybrid batch formation).

This module imports nothing of SGLang: the adapter (outside the engine) and the plugin (inside) share it.
"""

from __future__ import annotations

from typing import Any

from schedctl.engine_adapter.base import UnsupportedPolicy
from schedctl.policies.spec import KLPMSpec, PolicySpec, SLAISpec, changed_knobs

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
KIND_CODES = {KIND_OFF: "off", KIND_FCFS: "fcfs", KIND_LPM: "lpm", KIND_KLPM: "klpm", KIND_SLAI: "slai"}
K_INF = 0
SLAI_STRICT_FIRST = 1  # flags of kind slai, carried in schedctl_k
SLAI_FCFS_ORDER = 2
SUPPORTED_KINDS = frozenset({"fcfs", "lpm", "klpm", "slai"})  # PolicySpec kinds the plugin orders the queue by
# kinds that order by SGLang's prefix matches: they need the server started with --schedule-policy lpm
PREFIX_MATCH_KINDS = frozenset({"lpm", "klpm"})
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
    elif isinstance(spec, KLPMSpec):  # one spec, three codes (the plugin's prefix-match check reads the code)
        kind, k = (KIND_FCFS, 1) if spec.k == 1 else ((KIND_LPM, K_INF) if spec.k is None else (KIND_KLPM, spec.k))
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


def decode_policy(kind: int, k: int) -> PolicySpec | None:
    """The PolicySpec for channel numbers (None for off); ValueError for codes this version does not know."""
    if kind == KIND_OFF:
        return None
    if kind in (KIND_FCFS, KIND_LPM, KIND_KLPM):
        return KLPMSpec(k=queue_k_of(kind, k))
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
