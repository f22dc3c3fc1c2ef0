"""The running set: the decoding requests and their KV accounting, one owner for both batchers.

The engine owns one :class:`RunningSet`; the batch-formation strategies (``batching.py``, ``hybrid.py``) change it
only through :meth:`join`, :meth:`leave` and :meth:`advance`, and the engine's admission reads it. It keeps, beside
the requests (insertion order = admission order, newest last):

- ``ctx_tokens``: KV tokens of the decoding requests (the context their next decode step reads);
- ``remaining_tokens``: output tokens still to come for them (what admission reserves a share of);
- ``ratio``: that share (SGLang's ``new_token_ratio``), which decays per decode step to
  ``EngineConfig.new_token_ratio``, is reset by a retraction and, with ``init_new_token_ratio``, starts over
  when the engine falls idle. After a retraction the idealised engine raises it to ``retract_token_ratio``; with
  SGLang's scheduler (``sglang_lpm`` or ``sglang_plugin_order``) it becomes SGLang's estimate from what the
  requests still running have decoded (``NewTokenRatioTracker.estimate_new_token_ratio_after_retract``,
  ``srt/managers/scheduler_components/new_token_ratio_tracker.py``): min(1, (decoded + 20 x running) /
  (their output lengths + 1)), which may be lower than the share before it.

``schedule_conservativeness`` defines the share's init, floor and decay as SGLang's ``NewTokenRatioTracker.from_config``
does (:func:`sglang_reserve_shares`); :meth:`RunningSet.retune` rebuilds them at run time when it changes, keeping
the decay where it was (the rule of the SGLang plugin's ``engine_adapter/sglang/reserve.py``).

How much a request adds when it joins and takes when it leaves is the batcher's to say (an SGLang-like batcher
settles its decode steps in bulk, the hybrid one per iteration); the sums live here, written in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schedctl.sim.config import EngineConfig
    from schedctl.sim.engine import _Live

RETRACT_DECODE_STEPS = 20  # SGLang's SGLANG_RETRACT_DECODE_STEPS (srt/environ.py)
# srt/environ.py: SGLANG_INIT_NEW_TOKEN_RATIO, SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR, SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600


def rescaled_share(current: float, old_init: float, new_init: float, new_floor: float) -> float:
    """The reserve share now after ``schedule_conservativeness`` changed at run time: scaled by new init / old init
    (the decay goes on where it was) and clipped to [new floor, new init]. One rule for the simulator
    (``RunningSet.retune``) and the SGLang plugin (``engine_adapter/sglang/reserve.py``)."""
    scale = new_init / old_init if old_init > 0 else 1.0
    return min(new_init, max(new_floor, current * scale))


def sglang_reserve_shares(schedule_conservativeness: float, fixed_length_outputs: bool = False) -> dict[str, float]:
    """The EngineConfig fields of SGLang's reserve share for a ``schedule_conservativeness``.

    ``srt/managers/scheduler_components/new_token_ratio_tracker.py`` (``from_config``): init = min(0.7 c, 1),
    min = min(init * 0.14, 1), decay = (init - min) / 600 per decode step. ``fixed_length_outputs`` (every request
    sent with ``ignore_eos``): SGLang reserves all of a running request's remaining output whatever the share, so
    the share is 1 and ``c`` changes nothing.
    """
    if not schedule_conservativeness > 0:
        raise ValueError(f"schedule_conservativeness must be > 0, got {schedule_conservativeness!r}")
    init = 1.0 if fixed_length_outputs else min(INIT_NEW_TOKEN_RATIO * schedule_conservativeness, 1.0)
    floor = init if fixed_length_outputs else min(init * MIN_NEW_TOKEN_RATIO_FACTOR, 1.0)
    return dict(new_token_ratio=floor, init_new_token_ratio=init,
                token_ratio_decay_per_step=(init - floor) / NEW_TOKEN_RATIO_DECAY_STEPS)


class RunningSet:
    __slots__ = ("_decay", "_estimate", "_floor", "_idle_ratio", "_reset_when_idle", "_retract", "ctx_tokens",
                 "outputs_tokens", "ratio", "remaining_tokens", "requests")

    def __init__(self, cfg: EngineConfig) -> None:
        self.requests: dict[int, _Live] = {}  # by arrival seq; insertion order = admission order (newest last)
        self.ctx_tokens = 0
        self.remaining_tokens = 0
        self.outputs_tokens = 0  # the output lengths of the decoding requests, summed
        self._estimate = cfg.sglang_scheduler
        self._set_shares(cfg)
        self.ratio = self._idle_ratio

    def _set_shares(self, cfg: EngineConfig) -> None:
        self._floor = cfg.new_token_ratio
        self._decay = cfg.token_ratio_decay_per_step
        self._retract = cfg.retract_token_ratio
        self._reset_when_idle = cfg.init_new_token_ratio is not None
        self._idle_ratio = cfg.new_token_ratio if cfg.init_new_token_ratio is None else cfg.init_new_token_ratio

    def retune(self, cfg: EngineConfig) -> None:
        """New reserve shares (``schedule_conservativeness`` changed at run time): floor, decay and idle share from
        ``cfg``; the share now is scaled by new init / old init and clipped to [new floor, new init], so the decay
        goes on where it was (:func:`rescaled_share`)."""
        old_init = self._idle_ratio
        self._set_shares(cfg)
        self.ratio = rescaled_share(self.ratio, old_init, self._idle_ratio, self._floor)

    def __len__(self) -> int:
        return len(self.requests)

    def __bool__(self) -> bool:
        return bool(self.requests)

    def join(self, live: _Live, ctx_tokens: int, outputs_left: int) -> None:
        """``live`` starts decoding with ``ctx_tokens`` of KV and ``outputs_left`` tokens still to produce."""
        self.requests[live.seq] = live
        self.ctx_tokens += ctx_tokens
        self.remaining_tokens += outputs_left
        self.outputs_tokens += live.req.output_len

    def leave(self, live: _Live, ctx_tokens: int, outputs_left: int) -> None:
        """``live`` stops decoding (finished or retracted), holding ``ctx_tokens`` of KV, ``outputs_left`` to go."""
        del self.requests[live.seq]
        self.ctx_tokens -= ctx_tokens
        self.remaining_tokens -= outputs_left
        self.outputs_tokens -= live.req.output_len

    def advance(self, steps: int, tokens_per_step: int) -> None:
        """``steps`` decode steps ran, each producing ``tokens_per_step`` tokens (one per decoding request in it)."""
        self.ctx_tokens += steps * tokens_per_step
        self.remaining_tokens -= steps * tokens_per_step
        self.ratio = max(self._floor, self.ratio - steps * self._decay)

    def newest(self) -> _Live:
        return self.requests[next(reversed(self.requests))]

    def retracted(self) -> None:
        """A request went back to the queue (it has left the set): reserve more for a while."""
        if self._estimate:
            decoded = self.outputs_tokens - self.remaining_tokens
            self.ratio = min(1.0, (decoded + RETRACT_DECODE_STEPS * len(self.requests)) / (self.outputs_tokens + 1))
        else:
            self.ratio = max(self.ratio, self._retract)

    def idle(self) -> None:
        """Nothing runs: SGLang's reserve share starts over (only with ``init_new_token_ratio``)."""
        if self._reset_when_idle and not self.requests:
            self.ratio = self._idle_ratio
