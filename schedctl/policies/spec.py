"""PolicySpec: what a scheduling policy is, engine-agnostic, JSON-serialisable and versioned.

A PolicySpec is what the controller decides and what an engine adapter pushes. It is a discriminated union on
``kind``; every knob is validated here, so an engine never receives a policy it would have to second-guess.

Two families, and the family decides how an engine forms batches (:func:`is_token_budget`):

* queue ordering (SGLang-like prefill-first rounds): ONE spec, :class:`KLPMSpec`. ``k: int | None``: every
  k-th admission goes to the oldest waiting request; ``rank`` says how the others are chosen: ``lpm`` (longest
  prefix match, optionally aged by ``aging_tokens_per_pass``), ``hrrn`` (highest response ratio next, SGLang's
  token-based aging) or ``spf`` (shortest uncached prefill first); ``sglang`` runs SGLang 0.5.23's own pass rules
  (lpm and hrrn fall back to FCFS above 128 waiting). ``k = 1`` is FCFS and ``k = None`` (no oldest-first turn)
  is LPM. ``fcfs``, ``lpm`` and ``klpm:inf`` are parse aliases (also as JSON ``{"kind": "fcfs"}`` /
  ``{"kind": "lpm"}``), so one policy has one spec. Labels (:func:`policy_label`): ``fcfs``, ``lpm``, ``klpm:K``,
  ``hrrn``, ``spf``, ``lpm-aging:N``, ``sglang:fcfs``, ``sglang:lpm``, ``sglang:hrrn``, ``sglang:spf``.
  ``orders.queue_order`` is what the shared queue (``policies/klpm.py``) runs with; :func:`queue_family` names
  the family a tuner's arm belongs to (the k axis ``klpm``, or ``hrrn``, ``spf``, ``lpm-aging``, ``sglang``).
* token-budget hybrid batches (every iteration one batch of decode tokens and prefill chunks under a budget):
  ``sarathi`` (Sarathi-Serve), ``slai`` (SLO-aware, REFERENCES §2) and ``rad`` (resource-aware dynamic, §2).
  Their per-iteration rules live in ``policies/slai.py`` and ``policies/rad.py``.

Command-line form (:func:`parse_policy`, :func:`policy_label`): the queue labels above, and ``sarathi``,
``slai``, ``rad`` optionally with knobs, e.g. ``slai:theta_low=5,token_budget=512``. A bad knob raises ValueError
naming the policy, the knob and the reason.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

SPEC_VERSION: Literal[1] = 1

KValue = int | Literal["inf"]

# The largest finite k. An oldest-first turn every K_MAX admissions never comes in any real queue (it is LPM:
# write klpm:inf), and every k crosses the SGLang channel, the metrics and the log as a plain number.
K_MAX = 1_000_000
INT_KNOB_MAX = 10_000_000  # token budgets, running-request caps, tile widths: far above any GPU's


def shown(v: object, limit: int = 24) -> str:
    """A value for an error message: a 400-digit k is shown by its length, not written out."""
    text = repr(v)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_k(v: object) -> KValue:
    """A k as typed anywhere (settings, API, CLI, arms): an integer 1..K_MAX or "inf"; ValueError otherwise."""
    if isinstance(v, str):
        text = v.strip()
        if text.lower() in ("inf", "infinity", "∞"):
            return "inf"
        if not text.isdigit():
            raise ValueError(f'k must be an integer >= 1 or "inf", got {shown(v)}')
        if len(text.lstrip("0")) > len(str(K_MAX)):
            raise ValueError(f"k must be <= {K_MAX} (for pure LPM write inf), got {shown(v)}")
        v = int(text)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f'k must be an integer >= 1 or "inf", got {shown(v)}')
    if v < 1:
        raise ValueError(f"k must be >= 1, got {shown(v)}")
    if v > K_MAX:
        raise ValueError(f"k must be <= {K_MAX} (for pure LPM write inf), got {shown(v)}")
    return v


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    version: Literal[1] = SPEC_VERSION


Rank = Literal["lpm", "hrrn", "spf"]
AGING_MAX = 1_000_000  # tokens of priority per pass waited: far above any prompt, so one pass already dominates


class KLPMSpec(_Spec):
    """The queue-ordering policy: the oldest waiting request every ``k``-th pick, the others by ``rank``.

    ``k = 1`` is FCFS; ``k = None`` (``"inf"`` is accepted) never gives an oldest-first turn (``rank`` alone
    orders: ``lpm`` is LPM, ties to the oldest request). ``hrrn``, ``spf`` and aging are defined with ``k = None``
    only, and ``sglang`` with k 1 or None and no aging, so every policy has exactly one spec and one label.
    """

    kind: Literal["klpm"] = "klpm"
    k: int | None = Field(ge=1, le=K_MAX, description="k >= 1; None: pure LPM (never an oldest-first turn)")
    rank: Rank = Field("lpm", description="how the picks that are not an oldest-first turn choose: lpm, hrrn, spf")
    aging_tokens_per_pass: int = Field(0, ge=0, le=AGING_MAX, description=(
        "lpm only: priority = match_len + N * scheduling passes waited (LPM with aging); 0: plain LPM"))
    sglang: bool = Field(False, description=(
        "SGLang 0.5.23's own pass rules: a stable sort of its persistent list; lpm and hrrn are FCFS above 128 "
        "waiting (schedule_policy.py, _determine_active_policy)"))

    @field_validator("k", mode="before")
    @classmethod
    def _check_k(cls, v: object) -> object:
        return None if v is None else k_or_none(check_k(v))

    @model_validator(mode="after")
    def _one_spec_per_policy(self) -> KLPMSpec:
        if self.rank != "lpm" and self.k is not None:
            raise ValueError(f"{self.rank} has no oldest-first turn: k must be None (inf), got {self.k}")
        if self.aging_tokens_per_pass and (self.k is not None or self.rank != "lpm" or self.sglang):
            raise ValueError("aging_tokens_per_pass applies to plain lpm (k = None, rank lpm, not sglang) only")
        if self.sglang and self.k not in (1, None):
            raise ValueError(f"SGLang's own orders are fcfs, lpm, hrrn and spf: k must be 1 or None, got {self.k}")
        return self


def k_or_none(k: KValue) -> int | None:
    return None if k == "inf" else int(k)


def FCFSSpec() -> KLPMSpec:
    """First come, first served: k-LPM with k = 1 (the same spec as ``klpm:1``)."""
    return KLPMSpec(k=1)


def LPMSpec() -> KLPMSpec:
    """Longest prefix match first: k-LPM with k = None (the same spec as ``klpm:inf``)."""
    return KLPMSpec(k=None)


def HRRNSpec(sglang: bool = False) -> KLPMSpec:
    """Highest response ratio next with SGLang's token-based aging (``policies/orders.py``)."""
    return KLPMSpec(k=None, rank="hrrn", sglang=sglang)


def SPFSpec(sglang: bool = False) -> KLPMSpec:
    """Shortest uncached prefill first (SGLang's ``shortest-prefill-first`` key)."""
    return KLPMSpec(k=None, rank="spf", sglang=sglang)


def LPMAgingSpec(tokens_per_pass: int) -> KLPMSpec:
    """LPM with aging: priority = match_len + N * passes waited (N = ``tokens_per_pass`` >= 1)."""
    if tokens_per_pass < 1:
        raise ValueError(f"lpm-aging needs N >= 1 tokens per pass (lpm-aging:0 is lpm), got {tokens_per_pass}")
    return KLPMSpec(k=None, aging_tokens_per_pass=tokens_per_pass)


def _aliases(data: Any) -> Any:
    """JSON input: ``{"kind": "fcfs"}`` and ``{"kind": "lpm"}`` (older logs, hand-written pins) are k-LPM."""
    if isinstance(data, dict) and data.get("kind") in ("fcfs", "lpm") and "k" not in data:
        return {**data, "kind": "klpm", "k": 1 if data["kind"] == "fcfs" else None}
    return data


# --- token-budget hybrid batches ----------------------------------------------------------------------------
# Defaults are the SLAI paper's operator settings (REFERENCES §2; the authors' Mistral-7B configuration uses
# token_budget=512, max running requests 128, decode cap 128). Every float knob must be finite.

def _budget() -> Any:
    return Field(512, ge=1, le=INT_KNOB_MAX, description="tokens per iteration: decode tokens + prefill chunk tokens")


def _max_running() -> Any:
    return Field(128, ge=1, le=INT_KNOB_MAX, description="cap on running requests (decoding or partly prefilled)")


def _seconds(default: float, what: str) -> Any:
    return Field(default, gt=0, le=3600, allow_inf_nan=False, description=what)


class SarathiSpec(_Spec):
    """Sarathi-Serve: every running decode every iteration; prefill chunks in FCFS order fill the rest of the budget."""

    kind: Literal["sarathi"] = "sarathi"
    token_budget: int = _budget()
    max_running_requests: int = _max_running()

    @model_validator(mode="after")
    def _decodes_fit(self) -> SarathiSpec:
        if self.max_running_requests > self.token_budget:
            raise ValueError(
                f"max_running_requests ({self.max_running_requests}) must be <= token_budget ({self.token_budget}): "
                "Sarathi-Serve runs every running decode in every iteration, so they must all fit the budget"
            )
        return self


class SLAISpec(_Spec):
    """SLAI: critical decodes first, then partial and new prefills (shortest first), leftover budget to decodes.

    A running decode is critical once ``last token time + TBT(class) - tbt_slack_s - Θ · mean batch duration``
    has passed; Θ is ``theta_low`` while KV utilisation is below ``memory_limit``, ``theta_high`` at or above it.
    """

    kind: Literal["slai"] = "slai"
    token_budget: int = _budget()
    max_running_requests: int = _max_running()
    decode_cap: int = Field(128, ge=1, le=INT_KNOB_MAX,
                            description="most decode tokens per iteration (critical ones, and in all)")
    tbt_strict_s: float = _seconds(0.1, "TBT SLO of slo_class 'strict' requests")
    tbt_relaxed_s: float = _seconds(0.5, "TBT SLO of slo_class 'relaxed' requests")
    tbt_default_s: float = _seconds(0.2, "TBT SLO of slo_class 'default' requests")
    tbt_slack_s: float = Field(0.0, ge=0, le=3600, allow_inf_nan=False, description="seconds taken off every TBT SLO")
    theta_low: float = Field(5.0, ge=0, le=1e6, allow_inf_nan=False, description="Θ (mean batch durations of margin) "
                             "while KV utilisation < memory_limit")
    theta_high: float = Field(10.0, ge=0, le=1e6, allow_inf_nan=False, description="Θ at or above memory_limit")
    memory_limit: float = Field(0.96, gt=0, le=1, allow_inf_nan=False, description="KV utilisation that switches Θ")
    prefill_order: Literal["spf", "fcfs"] = Field("spf", description="new prefills shortest prompt first, or FCFS")
    strict_first: bool = Field(False, description="new prefills of slo_class 'strict' before the others")


class RADSpec(_Spec):
    """RAD: prefill-only and decode batches alternate (at most N prefill batches per cycle), token counts tiled."""

    kind: Literal["rad"] = "rad"
    token_budget: int = _budget()
    max_running_requests: int = _max_running()
    prefill_batches_per_cycle: int = Field(1, ge=1, le=INT_KNOB_MAX,
                                           description="N: prefill-only batches between two decode batches")
    tile_tokens: int | None = Field(None, ge=1, le=INT_KNOB_MAX, description="matmul tile width; unset: the GPU's")


TokenBudgetSpec = SarathiSpec | SLAISpec | RADSpec

PolicySpec = Annotated[
    Annotated[KLPMSpec | SarathiSpec | SLAISpec | RADSpec, Field(discriminator="kind")], BeforeValidator(_aliases)
]

_ADAPTER: TypeAdapter[PolicySpec] = TypeAdapter(PolicySpec)


def policy_from_dict(data: object) -> PolicySpec:
    """Validate a JSON-like dict into a PolicySpec (raises pydantic.ValidationError)."""
    return _ADAPTER.validate_python(data)


def policy_from_json(text: str | bytes) -> PolicySpec:
    return _ADAPTER.validate_json(text)


_KNOB_SPECS: dict[str, type[SarathiSpec] | type[SLAISpec] | type[RADSpec]] = {
    "sarathi": SarathiSpec, "slai": SLAISpec, "rad": RADSpec,
}


QUEUE_LABELS = "fcfs, lpm, klpm:K, hrrn, spf, lpm-aging:N, sglang:fcfs|lpm|hrrn|spf"
# SGLang 0.5.23's --schedule-policy values (srt/managers/schedule_policy.py, CacheAwarePolicy and
# CacheAgnosticPolicy) and the sglang: alias of each one schedctl models; the others are refused by name
SGLANG_POLICIES: dict[str, Rank | Literal["fcfs"]] = {
    "fcfs": "fcfs", "lpm": "lpm", "hrrn": "hrrn", "spf": "spf", "shortest-prefill-first": "spf"}
SGLANG_UNMODELLED = ("dfs-weight", "lof", "random", "routing-key")


def parse_policy(text: str) -> PolicySpec:
    """Parse the command-line form: the queue labels (``fcfs``, ``lpm``, ``klpm:K`` with K an integer >= 1 or
    ``inf``, ``hrrn``, ``spf``, ``lpm-aging:N``, ``sglang:fcfs|lpm|hrrn|spf``), and ``sarathi``, ``slai``, ``rad``,
    each optionally with ``:KNOB=VALUE,...`` (e.g. ``slai:theta_low=5,token_budget=512``)."""
    name, _, arg = text.strip().partition(":")
    name = name.strip().lower()
    arg = arg.strip()
    plain = {"fcfs": FCFSSpec, "lpm": LPMSpec, "hrrn": HRRNSpec, "spf": SPFSpec}
    if name in plain:
        if arg:
            raise ValueError(f"policy {name!r} takes no argument, got {text.strip()!r}")
        return plain[name]()
    if name == "klpm":
        if not arg:
            raise ValueError("klpm needs a k: write klpm:K, e.g. klpm:4 or klpm:inf")
        return KLPMSpec(k=check_k(arg))  # a bad k: one ValueError line, e.g. "k must be <= 1000000 ..."
    if name == "lpm-aging":
        return LPMAgingSpec(_aging(arg))
    if name == "sglang":
        return _sglang(arg.lower())
    if name in _KNOB_SPECS:
        return _with_knobs(_KNOB_SPECS[name], name, arg)
    raise ValueError(f"unknown policy {text!r}: expected {QUEUE_LABELS}, sarathi, slai or rad")


def _aging(arg: str) -> int:
    if not arg:
        raise ValueError("lpm-aging needs N, the priority tokens per pass waited: write lpm-aging:N, e.g. lpm-aging:64")
    if not arg.isdigit() or len(arg.lstrip("0")) > len(str(AGING_MAX)) or not 1 <= int(arg) <= AGING_MAX:
        raise ValueError(f"lpm-aging: N must be an integer 1..{AGING_MAX} (tokens per pass waited), got {shown(arg)}")
    return int(arg)


def _sglang(arg: str) -> KLPMSpec:
    if arg in SGLANG_UNMODELLED:
        raise ValueError(f"sglang:{arg}: SGLang's {arg} is not modelled; the sglang: orders are fcfs, lpm, hrrn, spf")
    if arg not in SGLANG_POLICIES:
        raise ValueError(f"sglang needs one of SGLang's policies: write sglang:fcfs, sglang:lpm, sglang:hrrn or "
                         f"sglang:spf, got {shown('sglang:' + arg)}")
    rank = SGLANG_POLICIES[arg]
    if rank == "fcfs":
        return KLPMSpec(k=1, sglang=True)
    return KLPMSpec(k=None, rank=rank, sglang=True)


def _with_knobs(model: type[SarathiSpec] | type[SLAISpec] | type[RADSpec], name: str, arg: str) -> PolicySpec:
    knobs = [f for f in model.model_fields if f not in ("kind", "version")]
    items: dict[str, str | None] = {}
    for part in arg.split(",") if arg else []:
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key:
            raise ValueError(f"policy {name!r}: {part.strip()!r} is not KNOB=VALUE")
        if key not in knobs:
            raise ValueError(f"policy {name!r}: unknown knob {key!r} (knobs: {', '.join(knobs)})")
        if key in items:
            raise ValueError(f"policy {name!r}: knob {key!r} given twice")
        items[key] = None if value.lower() in ("none", "null") else value
    try:
        return model.model_validate(items)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc", ())
        reason = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if loc and loc[0] in items:
            raise ValueError(f"policy {name!r}: knob {loc[0]!r}: {reason} (got {items[str(loc[0])]!r})") from None
        raise ValueError(f"policy {name!r}: {reason}") from None


def split_policies(text: str) -> list[str]:
    """Split a comma-separated list of policies whose knobs are also comma-separated.

    ``sarathi,slai:theta_low=5,token_budget=256,lpm`` -> ``["sarathi", "slai:theta_low=5,token_budget=256",
    "lpm"]``: a piece with ``=`` but no ``:`` is one more knob of the policy before it.
    """
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if "=" in piece and ":" not in piece and out:
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def policy_label(spec: PolicySpec) -> str:
    """The command-line form of a spec; ``parse_policy(policy_label(s)) == s``. Knobs at their defaults are left out."""
    if isinstance(spec, KLPMSpec):
        return queue_label(spec)
    if isinstance(spec, SarathiSpec | SLAISpec | RADSpec):
        knobs = [f"{name}={_knob_text(getattr(spec, name))}" for name in changed_knobs(spec)]
        return spec.kind + (":" + ",".join(knobs) if knobs else "")
    return spec.kind


def changed_knobs(spec: SarathiSpec | SLAISpec | RADSpec) -> list[str]:
    """The knobs of ``spec`` away from their defaults, in declaration order."""
    defaults = type(spec)()
    return [
        name for name in type(spec).model_fields
        if name not in ("kind", "version") and getattr(spec, name) != getattr(defaults, name)
    ]


def _knob_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        assert math.isfinite(value)
        return repr(value)
    return str(value)


def is_token_budget(spec: PolicySpec) -> bool:
    """True for the token-budget hybrid family (sarathi, slai, rad); False for the queue-ordering family."""
    return isinstance(spec, SarathiSpec | SLAISpec | RADSpec)


def queue_label(spec: KLPMSpec) -> str:
    """The label of a queue-ordering spec (see the module docstring)."""
    if spec.sglang:
        return "sglang:" + ("fcfs" if spec.k == 1 else spec.rank)
    if spec.aging_tokens_per_pass:
        return f"lpm-aging:{spec.aging_tokens_per_pass}"
    if spec.rank != "lpm":
        return spec.rank
    return "fcfs" if spec.k == 1 else ("lpm" if spec.k is None else f"klpm:{spec.k}")


def policy_family(spec: PolicySpec) -> str:
    """A policy's family for logs and plots: :func:`queue_family` for queue orders, the kind for the others."""
    return queue_family(spec) if isinstance(spec, KLPMSpec) else spec.kind


def queue_family(spec: KLPMSpec) -> str:
    """The family of a queue-ordering spec: ``klpm`` (the k axis: fcfs, klpm:K, lpm), ``lpm-aging`` (its N axis),
    ``hrrn``, ``spf``, or ``sglang`` (SGLang's own orders). What the tuner's step rules and the plots group by."""
    if spec.sglang:
        return "sglang"
    if spec.aging_tokens_per_pass:
        return "lpm-aging"
    return "klpm" if spec.rank == "lpm" else spec.rank


def queue_k(spec: PolicySpec) -> int | None:
    """The k of a k-axis spec (fcfs, klpm:K, lpm); None means no oldest-first turn (pure LPM). TypeError for any
    other policy (hrrn, spf, lpm-aging, sglang: are not k-LPM, though their k is None too)."""
    if isinstance(spec, KLPMSpec) and queue_family(spec) == "klpm":
        return spec.k
    if isinstance(spec, KLPMSpec):
        raise TypeError(f"{queue_label(spec)} is not a k-LPM order (fcfs, klpm:K, lpm)")
    raise TypeError(f"{spec.kind} is not a queue-ordering policy")
