"""The embedded engine's settings (``EngineConfig``) and the engine as SGLang 0.5.23's scheduler runs it
(``sglang_engine_config``); ``sim/engine.py`` re-exports both."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schedctl.sim.running import sglang_reserve_shares


class EngineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    chunked_prefill_tokens: int = Field(default=8192, ge=1, description="token budget of one prefill round")
    max_running_requests: int = Field(default=1024, ge=1)
    new_token_ratio: float = Field(default=0.4, ge=0, le=1, description="share of remaining outputs reserved")
    retract_token_ratio: float = Field(default=0.9, ge=0, le=1, description=(
        "reserve share right after a retraction (the idealised engine; SGLang's scheduler estimates it)"))
    token_ratio_decay_per_step: float = Field(default=0.001, ge=0)
    init_new_token_ratio: float | None = Field(default=None, ge=0, le=1, description=(
        "reserve share at start and whenever the engine falls idle, decaying to new_token_ratio (SGLang's "
        "NewTokenRatioTracker); unset: new_token_ratio from the start"))
    record_token_times: bool = False
    stream_tokens: bool = Field(default=False, description=(
        "keep each request's token times, by request id, in SimEngine.streams until the caller pops them (sim "
        "serve streams tokens as they are produced); the completed log does not keep them unless record_token_times"))
    max_decode_run_steps: int | None = Field(
        default=None, ge=1, description="cap on decode steps advanced at once (1 = the step-by-step loop; tests)"
    )
    tbt_by_class: bool = Field(default=False, description="also keep one TBT histogram per request SLO class")
    tile_tokens: int | None = Field(default=None, ge=1, description="GPU matmul tile width (RAD); unset: 128")
    trace_iterations: bool = Field(default=False, description="hybrid mode: keep a record of every iteration")
    sglang_lpm: bool = Field(default=False, description=(
        "fcfs/lpm order the waiting queue as SGLang 0.5.23's own scheduler does (sim/sglang_pass.py): LPM off above "
        "128 waiting, requests sharing a cold prefix deprioritised within a pass; off: the idealised k-LPM queue"))
    sglang_plugin_order: bool = Field(default=False, description=(
        "every queue policy orders as the schedctl plugin inside SGLang does (sim/sglang_pass.py): SGLang's "
        "deprioritisation, then k-LPM; with sglang_lpm or this, a batch's requests do not share uncached prefixes"))
    schedule_conservativeness: float | None = Field(default=None, gt=0, description=(
        "SGLang's knob the reserve shares were derived from (sim/running.py sglang_reserve_shares); unset: the "
        "shares were set directly"))
    fixed_length_outputs: bool = Field(default=False, description=(
        "every request is sent with ignore_eos: the reserve share stays 1 whatever schedule_conservativeness"))

    @property
    def sglang_scheduler(self) -> bool:
        """Whether the engine runs as SGLang's scheduler (either option): its admission reserve, its share after a
        retraction, and its matching of a round's requests against the tree as it was before the round."""
        return self.sglang_lpm or self.sglang_plugin_order

    @property
    def token_times(self) -> bool:
        """Whether requests in flight record every token's time (for the completed log or for streams)."""
        return self.record_token_times or self.stream_tokens


def sglang_engine_config(schedule_conservativeness: float = 1.0, fixed_length_outputs: bool = False,
                         **fields: object) -> EngineConfig:
    """The engine as SGLang 0.5.23's scheduler runs: its own pass order (``sglang_lpm``) and its reserve share.

    ``fixed_length_outputs``: every request is sent with ``ignore_eos`` (``schedctl load`` sends them so), and
    SGLang then reserves all of a running request's remaining output whatever the share ("fixed-length requests
    cannot benefit from the early-EOS estimate": ``PrefillAdder._get_running_request_total_token_offset`` and
    ``add_req_state`` in ``srt/managers/schedule_policy.py``): the share is 1 and ``schedule_conservativeness``
    changes nothing.

    The shares come from :func:`schedctl.sim.running.sglang_reserve_shares` (SGLang's ``NewTokenRatioTracker``):
    reset to init when the server is idle, and after a retraction set to SGLang's estimate from what the requests
    still running decoded (``RunningSet.retracted``).
    """
    base: dict[str, object] = dict(sglang_reserve_shares(schedule_conservativeness, fixed_length_outputs),
                                   schedule_conservativeness=schedule_conservativeness,
                                   fixed_length_outputs=fixed_length_outputs, sglang_lpm=True)
    return EngineConfig.model_validate({**base, **fields})
