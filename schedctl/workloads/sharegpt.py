"""ShareGPT-like requests: heavy-tailed prompt and output lengths, no sharing between requests.

Length model: log-normal prompt and output lengths (a median and a log-space sigma each), clipped to a context
window; an optional share of requests in the 'strict' TBT class (the others 'relaxed'), for SLO-aware policies.

Two parameter sets, and where each comes from:

* The defaults: the ShareGPT dataset as the vLLM paper describes it (Kwon et al., "Efficient Memory Management
  for Large Language Model Serving with PagedAttention", SOSP 2023, §6.1 / Fig. 11: mean input 161.31 and mean
  output 337.99 tokens, 8.4x and 5.8x Alpaca's). Honest caveat: those means were quoted from memory by the author
  of this module and have not been checked against the paper's text here; the paper gives means and histograms,
  no fitted spread, so sigma = 1.0 for both is OUR choice (a P90/P50 ratio of e^1.28 ≈ 3.6), and the medians
  follow from mean = median · e^(sigma²/2): 161.31 · e^-0.5 ≈ 98 and 337.99 · e^-0.5 ≈ 205 tokens.
* :data:`SHAREGPT4` (:data:`SHAREGPT4_CLI` on the command line): the OpenChat ShareGPT4 trace that Sarathi-Serve
  and the SLAI paper evaluate on, ``data/processed_traces/sharegpt_8k_filtered_stats_llama2_tokenizer.csv`` in
  github.com/microsoft/sarathi-serve (the file the SLAI authors' Mistral-7B config points to). Measured from that
  file (30,731 requests, Llama-2 tokenizer, contexts <= 8192): prompt tokens median 1730, P90 5696, mean 2340;
  output tokens median 415, P90 834, mean 439 (capped at 1024). Each log-normal matches the median and the P90:
  sigma = ln(P90 / median) / 1.2816, so prompts 0.93 and outputs 0.54; generated with max_context_len 8192 they
  give prompt median/P90/mean ≈ 1722/5678/2434 and output ≈ 400/815/456. (The trace's short-prompt tail is
  heavier than a log-normal's: its log-space spread is 1.63 for prompts; median and P90 are what drive queueing.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schedctl.tokens import IdAllocator
from schedctl.workloads.types import Request

_CHUNK = 4096


def lognormal_lens(rng: np.random.Generator, median_len: float, sigma: float, n: int) -> np.ndarray:
    """n integer lengths >= 1, log-normal with the given median and log-space sigma."""
    return np.maximum(1, np.rint(rng.lognormal(math.log(median_len), sigma, n))).astype(np.int64)


class ShareGptParams(BaseModel):
    """ShareGPT-like lengths (log-normal, heavy-tailed), every prompt unique; optional strict/relaxed SLO classes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["sharegpt"] = "sharegpt"
    prompt_median_len: float = Field(98.0, gt=0, description="median prompt tokens (vLLM paper mean 161 / e^0.5)")
    prompt_sigma: float = Field(1.0, ge=0, description="log-space spread of prompt lengths")
    output_median_len: float = Field(205.0, gt=0, description="median output tokens (vLLM paper mean 338 / e^0.5)")
    output_sigma: float = Field(1.0, ge=0, description="log-space spread of output lengths")
    max_context_len: int = Field(4096, ge=2, description="prompt + output tokens are clipped to this")
    strict_fraction: float | None = Field(
        None, ge=0, le=1, description="share of requests with slo_class 'strict' (others 'relaxed'); "
        "unset: all 'default'"
    )

    @model_validator(mode="after")
    def _check(self) -> ShareGptParams:
        if self.prompt_median_len >= self.max_context_len:
            raise ValueError("prompt_median_len must be below max_context_len")
        return self


SHAREGPT4 = ShareGptParams(
    prompt_median_len=1730.0, prompt_sigma=0.93, output_median_len=415.0, output_sigma=0.54, max_context_len=8192
)
SHAREGPT4_CLI = (
    "sharegpt:prompt_median_len=1730,prompt_sigma=0.93,output_median_len=415,output_sigma=0.54,max_context_len=8192"
)


def sharegpt_requests(p: ShareGptParams, rng: np.random.Generator, arrivals_s: Iterator[float]) -> Iterator[Request]:
    take = IdAllocator().take
    rid = 0
    while True:
        prompt_lens = np.minimum(lognormal_lens(rng, p.prompt_median_len, p.prompt_sigma, _CHUNK),
                                 p.max_context_len - 1)
        output_lens = np.minimum(lognormal_lens(rng, p.output_median_len, p.output_sigma, _CHUNK),
                                 p.max_context_len - prompt_lens)
        if p.strict_fraction is None:
            classes = ["default"] * _CHUNK
        else:
            classes = np.where(rng.random(_CHUNK) < p.strict_fraction, "strict", "relaxed").tolist()
        taken = 0
        for n, o, slo, t in zip(prompt_lens.tolist(), output_lens.tolist(), classes, arrivals_s, strict=False):
            yield Request(rid, t, take(n), o, None, None, None, slo)
            rid += 1
            taken += 1
        if taken < _CHUNK:
            return
