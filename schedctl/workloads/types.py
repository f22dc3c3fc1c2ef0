"""The request a workload produces and an engine serves.

`Request` is the hot in-memory type (a slotted dataclass: the simulator handles a million of them per minute);
`workloads/trace.py` validates the JSONL form with pydantic at the file boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

from schedctl.tokens import SYNTHETIC_TOKEN_BASE, TokenArray, as_tokens

__all__ = ["SYNTHETIC_TOKEN_BASE", "Request"]


@dataclass(slots=True)
class Request:
    request_id: int
    arrival_s: float
    prompt: TokenArray  # int64 token ids; any sequence of ints is converted (build arrays to skip the copy)
    output_len: int
    # Ids of the tokens this request generates, when a later request's prompt contains them (multi-turn chat:
    # turn t+1's prompt is turn t's prompt + turn t's output + the new user message). None: the engine makes
    # up fresh unique ids.
    output_tokens: TokenArray | None = None
    session_id: int | None = None  # multi-turn chat session, if any
    group_id: int | None = None  # prefix group the generator drew the prompt from (for analysis only)
    slo_class: str = "default"  # TBT class for SLO-aware policies ("strict" / "relaxed" / "default")

    def __post_init__(self) -> None:
        self.prompt = as_tokens(self.prompt)
        if self.output_tokens is not None:
            self.output_tokens = as_tokens(self.output_tokens)
        if self.output_len < 1:
            raise ValueError(f"request {self.request_id}: output_len must be >= 1, got {self.output_len}")
        if not self.prompt:
            raise ValueError(f"request {self.request_id}: empty prompt")
        if self.output_tokens is not None and len(self.output_tokens) != self.output_len:
            raise ValueError(f"request {self.request_id}: output_tokens has {len(self.output_tokens)} ids, "
                             f"output_len is {self.output_len}")
