"""PolicySpec: what a scheduling policy is, engine-agnostic, JSON-serialisable and versioned.

A PolicySpec is what the controller decides and what an engine adapter pushes. It is a discriminated union on
``kind``; every knob is validated here, so an engine never receives a policy it would have to second-guess.

The queue-ordering family is one idea with three names: ``fcfs`` is k-LPM with k=1, ``lpm`` is k-LPM with
k=inf, ``klpm`` takes any k >= 1 or "inf". :func:`queue_k` maps each of them to the k the shared k-LPM
queue (``policies/klpm.py``) runs with.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

SPEC_VERSION: Literal[1] = 1

KValue = int | Literal["inf"]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    version: Literal[1] = SPEC_VERSION


class FCFSSpec(_Spec):
    """First come, first served (k-LPM with k=1)."""

    kind: Literal["fcfs"] = "fcfs"


class LPMSpec(_Spec):
    """Longest prefix match first (k-LPM with k=inf); ties go to the oldest request."""

    kind: Literal["lpm"] = "lpm"


class KLPMSpec(_Spec):
    """k-LPM: the oldest waiting request, then k-1 requests by longest prefix match, repeated."""

    kind: Literal["klpm"] = "klpm"
    k: KValue = Field(description='k >= 1, or "inf" for pure LPM')

    @field_validator("k", mode="before")
    @classmethod
    def _check_k(cls, v: object) -> object:
        if isinstance(v, str):
            if v.strip().lower() in ("inf", "infinity", "∞"):
                return "inf"
            if v.strip().isdigit():
                v = int(v.strip())
            else:
                raise ValueError(f'k must be an integer >= 1 or "inf", got {v!r}')
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f'k must be an integer >= 1 or "inf", got {v!r}')
        if v < 1:
            raise ValueError(f"k must be >= 1, got {v}")
        return v


PolicySpec = Annotated[FCFSSpec | LPMSpec | KLPMSpec, Field(discriminator="kind")]

_ADAPTER: TypeAdapter[PolicySpec] = TypeAdapter(PolicySpec)


def policy_from_dict(data: object) -> PolicySpec:
    """Validate a JSON-like dict into a PolicySpec (raises pydantic.ValidationError)."""
    return _ADAPTER.validate_python(data)


def policy_from_json(text: str | bytes) -> PolicySpec:
    return _ADAPTER.validate_json(text)


def parse_policy(text: str) -> PolicySpec:
    """Parse the command-line form: ``fcfs``, ``lpm``, ``klpm:K`` (K an integer >= 1 or ``inf``)."""
    name, _, arg = text.strip().partition(":")
    name = name.lower()
    if name == "fcfs" and not arg:
        return FCFSSpec()
    if name == "lpm" and not arg:
        return LPMSpec()
    if name == "klpm":
        if not arg:
            raise ValueError("klpm needs a k: write klpm:K, e.g. klpm:4 or klpm:inf")
        return KLPMSpec(k=arg)
    raise ValueError(f"unknown policy {text!r}: expected fcfs, lpm or klpm:K")


def policy_label(spec: PolicySpec) -> str:
    """The command-line form of a spec; ``parse_policy(policy_label(s)) == s``."""
    if isinstance(spec, KLPMSpec):
        return f"klpm:{spec.k}"
    return spec.kind


def queue_k(spec: PolicySpec) -> int | None:
    """The k of the shared k-LPM queue for a queue-ordering spec; None means k=inf (pure LPM)."""
    if isinstance(spec, FCFSSpec):
        return 1
    if isinstance(spec, LPMSpec):
        return None
    if isinstance(spec, KLPMSpec):
        return None if spec.k == "inf" else spec.k
    raise TypeError(f"{spec.kind} is not a queue-ordering policy")
