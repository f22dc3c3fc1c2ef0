"""Step-time model: how long one forward step of a serving engine takes, from the GPU and the LLM.

A step processes, for each sequence i in the batch, e_i new tokens on top of c_i cached context tokens (a
prefill chunk has e_i >= 1; a decode has e_i = 1). Six batch features carry everything the model needs:

    new_tokens         = sum e_i                               dense matmul work (FFN + projections)
    seqs               = number of sequences                   one LM-head row (logits) per sequence
    attn_ctx_tokens    = sum e_i*c_i + e_i*(e_i+1)/2          (query, key) pairs of causal attention
    kv_tokens          = sum (c_i + e_i)                       KV-cache tokens read or written
    prefill_seqs       = prefill chunks in the step            (0: a decode-only step)
    prefill_ctx_tokens = sum c_i over the prefill chunks       cached context a prefill attends to

    compute_s = cn*new_tokens + cs*seqs + ca*attn_ctx_tokens + cp*prefill_ctx_tokens   (FLOPs / achieved FLOP/s)
    memory_s  = m0 + mk*kv_tokens                              (weight bytes + KV bytes) / achieved bandwidth
    launch_s  = l0*[prefill_seqs > 0] + lc*[prefill_ctx_tokens > 0]    host time to launch a prefill's kernels
    fixed_s   = overhead_s + bs*[new_tokens >= 2]                  per step, outside the max
    step_s    = fixed_s + max(compute_s, memory_s, launch_s)        the slowest of the three, plus the fixed cost

The first two roofs are the datasheet roofline: from a datasheet the coefficients are FLOPs or bytes per feature
divided by peak throughput times an efficiency, and the launch roof and ``cp`` are 0. The launch roof and the
per-context-token cost are what measured small steps show the roofline misses (config/profiles/README.md,
docs/fidelity.md): a prefill run eagerly (no CUDA graph) cannot finish before the host has launched its
kernels, a few per layer, so a prefill of 128 tokens takes as long as one of 512; and a short chunk over a long
cached context keeps few attention tiles busy, so its attention costs per context token, not per (query, key)
pair. ``bs`` (``batched_step_s``) is the fixed cost of the matrix-matrix path: on a CPU a step of one token (one
decode sequence) runs matrix-vector products, much cheaper than the two-row step (5 ms against 10 ms on the
profile in config/profiles/cpu-small-llama). With every new coefficient 0 the model is exactly the roofline.
``fit_step_profile`` fits the coefficients to measured step timings (non-negative least squares of the
relative error, one fit per regime, alternating until the regimes settle); :func:`transfer_profile` carries a
fitted profile to another GPU or model through the datasheet ratios.

Decode steps between scheduler events are advanced in bulk: with a fixed batch every feature grows linearly
with the step index j, so compute and memory times are lines in j and a run of n steps has a closed-form
duration (:class:`DecodeRun`). That is what makes the simulator's cost grow with events, not with tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schedctl.sim.profiles import GPUProfile, ModelProfile


@dataclass(frozen=True, slots=True)
class StepBatch:
    """The features of one forward step (see the module docstring)."""

    new_tokens: float
    seqs: float
    attn_ctx_tokens: float
    kv_tokens: float
    prefill_seqs: float = 0.0
    prefill_ctx_tokens: float = 0.0

    @staticmethod
    def of(chunks: Sequence[tuple[int, int]]) -> StepBatch:
        """Features of a prefill step given (new tokens e_i, cached context c_i) per prefill chunk."""
        new = seqs = attn = kv = ctx = 0
        for e, c in chunks:
            new += e
            seqs += 1
            attn += e * c + e * (e + 1) // 2
            kv += c + e
            ctx += c
        return StepBatch(new, seqs, attn, kv, seqs, ctx)

    @staticmethod
    def from_counts(
        prefill_tokens: int, prefill_context_tokens: int, decode_seqs: int, decode_context_tokens: int,
        prefill_seqs: int = 1,
    ) -> StepBatch:
        """Features from aggregate counts (the columns of a step-timing CSV).

        Prefill: ``prefill_tokens`` new tokens over ``prefill_seqs`` sequences (split evenly) after
        ``prefill_context_tokens`` cached tokens in total. Decode: ``decode_seqs`` sequences whose contexts
        total ``decode_context_tokens``.
        """
        p_seqs = prefill_seqs if prefill_tokens > 0 else 0
        per_e = prefill_tokens / p_seqs if p_seqs else 0.0
        attn = prefill_tokens * (prefill_context_tokens / p_seqs if p_seqs else 0.0) + p_seqs * per_e * (per_e + 1) / 2
        attn += decode_context_tokens + decode_seqs
        kv = prefill_context_tokens + prefill_tokens + decode_context_tokens + decode_seqs
        return StepBatch(prefill_tokens + decode_seqs, p_seqs + decode_seqs, attn, kv, p_seqs,
                         prefill_context_tokens if p_seqs else 0)


class StepTimeProfile(BaseModel):
    """Coefficients of the step-time model, in seconds per unit of each feature.

    The last four (the launch roof, the per-prefill-context-token cost and the batched path's fixed cost)
    default to 0: a profile written before they existed loads unchanged and predicts what it did.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    overhead_s: float = Field(ge=0)
    s_per_new_token: float = Field(ge=0)
    s_per_seq: float = Field(ge=0)
    s_per_attn_ctx_token: float = Field(ge=0)
    memory_base_s: float = Field(ge=0)
    s_per_kv_token: float = Field(ge=0)
    s_per_prefill_ctx_token: float = Field(default=0.0, ge=0)
    prefill_launch_s: float = Field(default=0.0, ge=0)
    prefill_ctx_launch_s: float = Field(default=0.0, ge=0)
    batched_step_s: float = Field(default=0.0, ge=0)
    source: str = "datasheet"  # "datasheet" or what it was fitted from

    @staticmethod
    def from_datasheet(gpu: GPUProfile, model: ModelProfile) -> StepTimeProfile:
        flops = gpu.peak_flops * gpu.compute_efficiency
        bw = gpu.bandwidth_bytes_per_s * gpu.memory_efficiency
        return StepTimeProfile(
            overhead_s=gpu.step_overhead_s,
            s_per_new_token=2 * model.layer_matmul_params / flops,
            s_per_seq=2 * model.lm_head_params / flops,
            s_per_attn_ctx_token=4 * model.num_layers * model.q_dim / flops,
            memory_base_s=model.weight_bytes / bw,
            s_per_kv_token=model.kv_bytes_per_token / bw,
            source=f"datasheet:{gpu.name}/{model.name}",
        )

    def efficiencies(self, gpu: GPUProfile, model: ModelProfile) -> tuple[float, float]:
        """(compute, memory) efficiency implied by these coefficients for the given hardware and model."""
        comp = mem = 0.0
        if self.s_per_new_token:
            comp = 2 * model.layer_matmul_params / (gpu.peak_flops * self.s_per_new_token)
        if self.s_per_kv_token:
            mem = model.kv_bytes_per_token / (gpu.bandwidth_bytes_per_s * self.s_per_kv_token)
        return comp, mem


class StepTimeModel:
    """Step durations from a profile: one implementation serves single steps, decode runs and fitting."""

    def __init__(self, profile: StepTimeProfile) -> None:
        self.profile = profile
        p = profile
        self._coef = (p.s_per_new_token, p.s_per_seq, p.s_per_attn_ctx_token, p.memory_base_s, p.s_per_kv_token)
        self._cp, self._l0, self._lc = p.s_per_prefill_ctx_token, p.prefill_launch_s, p.prefill_ctx_launch_s

    @staticmethod
    def for_hardware(gpu: GPUProfile, model: ModelProfile) -> StepTimeModel:
        return StepTimeModel(StepTimeProfile.from_datasheet(gpu, model))

    def terms(self, b: StepBatch) -> tuple[float, float]:
        """(compute_s, memory_s) of a step, before the max and the overhead."""
        cn, cs, ca, m0, mk = self._coef
        compute = cn * b.new_tokens + cs * b.seqs + ca * b.attn_ctx_tokens + self._cp * b.prefill_ctx_tokens
        return compute, m0 + mk * b.kv_tokens

    def launch_s(self, b: StepBatch) -> float:
        """The launch roof: 0 for a decode-only step (decodes replay CUDA graphs)."""
        if b.prefill_seqs <= 0:
            return 0.0
        return self._l0 + (self._lc if b.prefill_ctx_tokens > 0 else 0.0)

    def step_s(self, b: StepBatch) -> float:
        compute, memory = self.terms(b)
        return self.fixed_s(b.new_tokens) + max(compute, memory, self.launch_s(b))

    def fixed_s(self, new_tokens: float) -> float:
        """The cost outside the max: the per-step overhead, plus the batched path's when a step has >= 2 tokens."""
        return self.profile.overhead_s + (self.profile.batched_step_s if new_tokens >= 2 else 0.0)

    def decode_run(self, batch_size: int, context_tokens: int) -> DecodeRun:
        """A run of decode steps of ``batch_size`` sequences whose contexts total ``context_tokens`` now."""
        b0 = StepBatch(batch_size, batch_size, context_tokens + batch_size, context_tokens + batch_size)
        c0, m0 = self.terms(b0)
        # Each step adds one context token per sequence: every feature that grows does so by batch_size.
        b1 = StepBatch(batch_size, batch_size, b0.attn_ctx_tokens + batch_size, b0.kv_tokens + batch_size)
        c1, m1 = self.terms(b1)
        return DecodeRun(self.fixed_s(batch_size), c0, c1 - c0, m0, m1 - m0)


@dataclass(frozen=True, slots=True)
class DecodeRun:
    """Durations of decode steps j = 0, 1, ... : overhead + max(c0 + c1*j, m0 + m1*j)."""

    overhead_s: float
    c0: float
    c1: float
    m0: float
    m1: float

    def step_s(self, j: int) -> float:
        return self.overhead_s + max(self.c0 + self.c1 * j, self.m0 + self.m1 * j)

    def _crossover(self) -> float:
        """Step index where the two lines cross (inf if they do not)."""
        dc = self.c1 - self.m1
        return math.inf if dc == 0 else (self.m0 - self.c0) / dc

    def total_s(self, n: int) -> float:
        """Duration of steps 0..n-1, in closed form (the max of two lines is piecewise linear)."""
        if n <= 0:
            return 0.0

        def line_sum(a: float, b: float, j0: int, j1: int) -> float:  # sum of a + b*j over j0 <= j < j1
            k = j1 - j0
            return a * k + b * (j0 + j1 - 1) * k / 2 if k > 0 else 0.0

        x = self._crossover()
        first_compute = self.c0 > self.m0 or (self.c0 == self.m0 and self.c1 >= self.m1)
        split = n if not (0 < x < n) else min(n, max(0, math.ceil(x)))
        a1, b1, a2, b2 = (
            (self.c0, self.c1, self.m0, self.m1) if first_compute else (self.m0, self.m1, self.c0, self.c1)
        )
        return self.overhead_s * n + line_sum(a1, b1, 0, split) + line_sum(a2, b2, split, n)

    def steps_to_reach(self, dt_s: float, limit: int) -> int:
        """Smallest n in [1, limit] with total_s(n) >= dt_s (limit if none): the step during which dt_s passes."""
        if dt_s <= 0 or limit <= 1:
            return min(1, limit) if limit >= 1 else 0
        if self.total_s(limit) < dt_s:
            return limit
        lo, hi = 0, limit  # total_s(lo) < dt_s <= total_s(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.total_s(mid) >= dt_s:
                hi = mid
            else:
                lo = mid
        return hi

    def step_times_s(self, j0: int, j1: int) -> np.ndarray:
        """Durations of steps j0..j1-1 as an array (for TBT histograms)."""
        j = np.arange(j0, j1, dtype=float)
        return self.overhead_s + np.maximum(self.c0 + self.c1 * j, self.m0 + self.m1 * j)


def transfer_profile(profile: StepTimeProfile, src_gpu: GPUProfile, src_model: ModelProfile, dst_gpu: GPUProfile,
                     dst_model: ModelProfile) -> StepTimeProfile:
    """A profile fitted on one GPU and model, carried to another through the datasheet ratios.

    Each compute coefficient scales with the FLOPs of its feature over the peak FLOP/s, each memory coefficient
    with the bytes of its feature over the peak bandwidth (the achieved efficiencies are assumed to carry over),
    the launch roof and the batched path's fixed cost with the number of layers (kernels are launched per layer
    by the same kind of host), and
    the per-step overhead with the GPUs' ``step_overhead_s`` (1 when the source's is 0).
    """
    flops = src_gpu.peak_flops / dst_gpu.peak_flops
    bw = src_gpu.bandwidth_bytes_per_s / dst_gpu.bandwidth_bytes_per_s
    attn = dst_model.num_layers * dst_model.q_dim / (src_model.num_layers * src_model.q_dim) * flops
    over = dst_gpu.step_overhead_s / src_gpu.step_overhead_s if src_gpu.step_overhead_s else 1.0
    layers = dst_model.num_layers / src_model.num_layers
    p = profile
    return StepTimeProfile(
        overhead_s=p.overhead_s * over,
        s_per_new_token=p.s_per_new_token * dst_model.layer_matmul_params / src_model.layer_matmul_params * flops,
        s_per_seq=p.s_per_seq * dst_model.lm_head_params / src_model.lm_head_params * flops,
        s_per_attn_ctx_token=p.s_per_attn_ctx_token * attn,
        s_per_prefill_ctx_token=p.s_per_prefill_ctx_token * attn,
        memory_base_s=p.memory_base_s * dst_model.weight_bytes / src_model.weight_bytes * bw,
        s_per_kv_token=p.s_per_kv_token * dst_model.kv_bytes_per_token / src_model.kv_bytes_per_token * bw,
        prefill_launch_s=p.prefill_launch_s * layers,
        prefill_ctx_launch_s=p.prefill_ctx_launch_s * layers,
        batched_step_s=p.batched_step_s * layers,
        source=f"{p.source} -> {dst_gpu.name}/{dst_model.name} (datasheet ratios)",
    )
