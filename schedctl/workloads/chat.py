"""Multi-turn chat sessions: each turn's prompt extends the previous turn's prompt and output.

Turn t+1's prompt = turn t's prompt + turn t's output tokens + a new user message. All sessions share one system
prompt. Sessions start by the arrival process; within a session, the next turn arrives a think time after the
previous turn *arrived* (open loop: the think time includes waiting for the answer, so choose it well above the
expected latency; if the engine is slower, the next turn arrives before the previous output exists and simply
finds less of its prompt in the cache). Sessions interleave; the stream is merged in arrival order with a heap.

Rate: the rate schedule counts requests, so sessions start at rate / expected turns per session (the expectation
of the capped geometric turn count; sessions cut short by the context window make the request rate a little
lower). A turn whose output a later turn reuses carries ``output_tokens``; the last turn of a session does not.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schedctl.tokens import IdAllocator, TokenArray
from schedctl.workloads.shared_prefix import id_range
from schedctl.workloads.sharegpt import lognormal_lens
from schedctl.workloads.types import Request

_CHUNK = 1024


class ChatParams(BaseModel):
    """Multi-turn chats: one shared system prompt, growing per-session context, think time between turns."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["chat"] = "chat"
    system_prompt_len: int = Field(256, ge=0, description="tokens of the system prompt every session shares")
    user_message_len: float = Field(64.0, gt=0, description="median tokens of a user message")
    output_len: float = Field(256.0, gt=0, description="median output tokens of a turn")
    length_sigma: float = Field(0.5, ge=0, description="log-normal spread of message and output lengths (0: fixed)")
    mean_turns: float = Field(4.0, ge=1, description="mean of the geometric number of turns (before the caps)")
    max_turns: int = Field(16, ge=1, description="turns per session at most")
    think_time_s: float = Field(20.0, gt=0, description="mean time from a turn's arrival to the next turn's")
    min_think_time_s: float = Field(5.0, ge=0, description="think time at least (exponential above it)")
    max_context_len: int = Field(8192, ge=4, description="a session ends before a turn would exceed this")

    @model_validator(mode="after")
    def _check(self) -> ChatParams:
        if self.min_think_time_s > self.think_time_s:
            raise ValueError("min_think_time_s exceeds think_time_s (the mean)")
        if self.system_prompt_len + 2 > self.max_context_len:
            raise ValueError("system_prompt_len leaves no room in max_context_len")
        return self


def expected_turns(p: ChatParams) -> float:
    """E[min(Geometric(1/mean_turns), max_turns)] = (1 - (1-q)^M) / q with q = 1/mean_turns."""
    q = 1.0 / p.mean_turns
    return float((1.0 - (1.0 - q) ** p.max_turns) / q)


def _draws(draw: Callable[[int], np.ndarray]) -> Iterator[int | float]:
    while True:
        yield from draw(_CHUNK).tolist()


def chat_requests(p: ChatParams, rng: np.random.Generator, session_starts_s: Iterator[float]) -> Iterator[Request]:
    system = id_range(1, p.system_prompt_len)  # shared: "vocabulary" ids below SYNTHETIC_TOKEN_BASE
    take = IdAllocator().take  # session-own messages and outputs
    turns = _draws(lambda n: np.minimum(rng.geometric(1.0 / p.mean_turns, n), p.max_turns))
    messages = _draws(lambda n: lognormal_lens(rng, p.user_message_len, p.length_sigma, n))
    outputs = _draws(lambda n: lognormal_lens(rng, p.output_len, p.length_sigma, n))
    thinks = _draws(lambda n: p.min_think_time_s + rng.exponential(p.think_time_s - p.min_think_time_s, n))
    room = p.max_context_len - p.system_prompt_len

    # Pending turns: (arrival_s, seq, session_id, context so far, turns left incl. this one, message len, output len)
    heap: list[tuple[float, int, int, TokenArray, int, int, int]] = []
    seq = 0  # tie-break: equal arrival times pop in push order
    sessions = 0
    next_start = next(session_starts_s, None)
    rid = 0
    while True:
        while next_start is not None and (not heap or next_start <= heap[0][0]):
            msg = min(int(next(messages)), room - 1)
            out = min(int(next(outputs)), room - msg)
            heapq.heappush(heap, (next_start, seq, sessions, system, int(next(turns)), msg, out))
            seq += 1
            sessions += 1
            next_start = next(session_starts_s, None)
        if not heap:
            return
        t, _, sid, context, turns_left, msg, out = heapq.heappop(heap)
        prompt = context + take(msg)
        output_tokens: TokenArray | None = None
        if turns_left > 1:
            next_msg, next_out = int(next(messages)), int(next(outputs))
            if len(prompt) + out + next_msg + next_out <= p.max_context_len:
                output_tokens = take(out)
                think = float(next(thinks))
                heapq.heappush(heap, (t + think, seq, sid, prompt + output_tokens, turns_left - 1, next_msg, next_out))
                seq += 1
        yield Request(rid, t, prompt, out, output_tokens, sid, None, "default")
        rid += 1
