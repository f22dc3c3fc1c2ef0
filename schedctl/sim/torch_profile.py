"""Time real transformer forward steps with torch: measured rows for ``schedctl calibrate``.

The model is a Llama-style decoder with random weights and the shape of a :class:`ModelProfile` (layers,
hidden size, heads, KV heads, head dim, MLP size, vocabulary): token embedding; per layer RMSNorm, fused QKV
projection, rotary embedding, grouped-query attention over a KV cache (``scaled_dot_product_attention``), output
projection, RMSNorm, gated SiLU MLP; final RMSNorm and the LM head on the last position of each sequence, then
greedy sampling. bf16 on a GPU, float32 on a CPU.

One forward step is a list of sequences, each with ``e`` new tokens on top of ``c`` cached ones (the step-time
model's view, see ``step_time.py``). Matmuls run over all the step's tokens at once; attention runs per group of
same-shaped sequences against per-layer KV caches of ``c + e`` slots, the new tokens' K/V written into the last
``e`` (what a serving engine does, minus paging). Prefill with cached context needs causal attention aligned to
the bottom right (query i at position c + i sees keys 0..c+i): torch's ``causal_lower_right`` bias, which runs
the flash kernel on a GPU (with the KV heads expanded to the query heads: a little extra memory traffic that a
paged-prefix kernel such as FlashInfer's does not have), or an explicit mask on older torch and on the CPU.
RMSNorm uses torch's fused ``rms_norm`` where it exists. The forward is plain eager torch, so it launches more
kernels per layer than a serving engine's fused ones: small decode steps carry more fixed cost than SGLang's.

On CUDA, decode-only steps are replayed from a CUDA graph as SGLang does (falling back to eager if capture
fails). A step's time is the median over ``repetitions`` runs after ``warmup`` runs (or the minimum, on a shared
host), each between device synchronisations.

torch is imported only when profiling starts: the rest of schedctl never needs it.
"""

from __future__ import annotations

import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schedctl.sim.calibrate import StepRow
from schedctl.sim.profiles import ModelProfile

INSTALL_HINT = "pip install 'schedctl[profile]' (or: pip install torch==2.13.0 for the CPU build)"


class TorchMissing(RuntimeError):
    """torch is not installed; the message says how to install it."""


def import_torch() -> Any:
    try:
        import torch
    except ModuleNotFoundError:
        raise TorchMissing(f"`schedctl profile` needs torch, which is not installed: {INSTALL_HINT}") from None
    return torch


class Point(BaseModel):
    """One forward step to time: an optional prefill chunk beside an optional batch of decodes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefill_tokens: int = Field(default=0, ge=0)
    prefill_context_tokens: int = Field(default=0, ge=0)
    decode_seqs: int = Field(default=0, ge=0)
    decode_context_per_seq: int = Field(default=0, ge=0)

    def chunks(self) -> list[tuple[int, int, int]]:
        """(sequences, new tokens each, cached tokens each) per group of same-shaped sequences."""
        out = []
        if self.prefill_tokens:
            out.append((1, self.prefill_tokens, self.prefill_context_tokens))
        if self.decode_seqs:
            out.append((self.decode_seqs, 1, self.decode_context_per_seq))
        return out

    def kv_tokens(self) -> int:
        return sum(n * (e + c) for n, e, c in self.chunks())

    def row(self, seconds: float) -> StepRow:
        return StepRow(prefill_tokens=self.prefill_tokens, prefill_context_tokens=self.prefill_context_tokens,
                       decode_seqs=self.decode_seqs,
                       decode_context_tokens=self.decode_seqs * self.decode_context_per_seq, seconds=seconds)


class ProfileGrid(BaseModel):
    """The steps to time: every prefill size x cached context, every decode batch x context, some mixed steps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefill_tokens: list[int] = Field(default_factory=list)
    prefill_context_tokens: list[int] = Field(default_factory=lambda: [0])
    decode_seqs: list[int] = Field(default_factory=list)
    decode_context_per_seq: list[int] = Field(default_factory=list)
    mixed: list[tuple[int, int, int]] = Field(default_factory=list)  # (prefill tokens, decode seqs, ctx per seq)
    warmup: int = Field(default=2, ge=0)
    repetitions: int = Field(default=5, ge=1)
    passes: int = Field(default=1, ge=1)  # times the whole grid is measured (each pass in a new shuffle)
    statistic: Literal["median", "min"] = "median"  # min suits a shared host: interference only adds time

    def points(self) -> list[Point]:
        pts = [Point(prefill_tokens=e, prefill_context_tokens=c)
               for e in self.prefill_tokens if e > 0 for c in self.prefill_context_tokens]
        pts += [Point(decode_seqs=b, decode_context_per_seq=c)
                for b in self.decode_seqs if b > 0 for c in self.decode_context_per_seq]
        pts += [Point(prefill_tokens=e, decode_seqs=b, decode_context_per_seq=c) for e, b, c in self.mixed]
        return pts


GRIDS = {
    # GPU-sized models (Llama-3.2-1B, Llama-3.1-8B): 28 prefill + 36 decode + 4 mixed steps
    "default": ProfileGrid(
        prefill_tokens=[128, 256, 512, 1024, 2048, 4096, 8192], prefill_context_tokens=[0, 1024, 4096, 16384],
        decode_seqs=[1, 2, 4, 8, 16, 32, 64, 128, 256], decode_context_per_seq=[128, 512, 2048, 8192],
        mixed=[(256, 16, 1024), (256, 64, 1024), (2048, 16, 1024), (2048, 64, 1024)], warmup=3, repetitions=10,
    ),
    # small models on a CPU: 12 prefill + 12 decode + 1 mixed steps
    "small": ProfileGrid(
        prefill_tokens=[16, 64, 256, 1024], prefill_context_tokens=[0, 512, 2048],
        decode_seqs=[1, 4, 16, 64], decode_context_per_seq=[64, 512, 2048],
        mixed=[(256, 16, 512)], warmup=2, repetitions=5,
    ),
}


@dataclass
class ProfileResult:
    rows: list[StepRow]
    device: str  # in words, e.g. "cpu (2 threads), torch 2.13.0, float32"
    spreads: list[float]  # per row: (max - min) / median over the repetitions
    skipped: list[str] = field(default_factory=list)  # points not measured or not as asked, and why

    def comments(self, model: ModelProfile, grid: ProfileGrid, seed: int) -> list[str]:
        shape = ", ".join(f"{k}={v}" for k, v in model.model_dump().items() if k != "name")
        spread = f"median {statistics.median(self.spreads):.1%}, worst {max(self.spreads):.1%}" if self.spreads else "-"
        return [
            "schedctl profile: measured forward-step times of a random-weight Llama-style model",
            f"device: {self.device}",
            f"model: {model.name}: {shape}",
            f"seconds: {grid.statistic} of {grid.passes} pass(es) x {grid.repetitions} runs, each after "
            f"{grid.warmup} warm-up runs; seed {seed}",
            f"spread of the runs, (max - min) / median: {spread}",
        ]


def prefix_causal_mask(torch: Any, new_tokens: int, cached_tokens: int, device: str = "cpu") -> Any:
    """Boolean [new, cached + new] mask, True where query i (at position cached + i) may see key j: j <= cached + i."""
    keys = torch.arange(cached_tokens + new_tokens, device=device)
    return keys[None, :] <= (cached_tokens + torch.arange(new_tokens, device=device))[:, None]


def _prefix_bias(torch: Any, new_tokens: int, cached_tokens: int, device: str) -> Any:
    """The attention mask of a prefill after cached context: a lower-right causal bias where torch has it."""
    try:
        from torch.nn.attention.bias import causal_lower_right
    except ImportError:
        return prefix_causal_mask(torch, new_tokens, cached_tokens, device)
    return causal_lower_right(new_tokens, cached_tokens + new_tokens)


class _Runner:
    """Random weights of one model shape on one device, and a forward step over grouped sequences."""

    def __init__(self, torch: Any, shape: ModelProfile, device: str, dtype: Any, seed: int) -> None:
        self.t, self.shape, self.device, self.dtype = torch, shape, device, dtype
        torch.manual_seed(seed)
        h, q, kv, inter = shape.hidden_size, shape.q_dim, shape.kv_dim, shape.intermediate_size

        def w(rows: int, cols: int) -> Any:  # scaled so activations stay O(1) through the layers
            return torch.randn(rows, cols, device=device, dtype=dtype) / rows**0.5

        self.embed = torch.randn(shape.vocab_size, h, device=device, dtype=dtype)
        self.lm_head = self.embed.T if shape.tied_embeddings else w(h, shape.vocab_size)
        self.layers = [
            {"qkv": w(h, q + 2 * kv), "o": w(q, h), "gate_up": w(h, 2 * inter), "down": w(inter, h),
             "norm1": torch.ones(h, device=device, dtype=dtype), "norm2": torch.ones(h, device=device, dtype=dtype)}
            for _ in range(shape.num_layers)
        ]
        self.norm_f = torch.ones(h, device=device, dtype=dtype)
        self.gqa_kwarg = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)

    def _rms(self, x: Any, weight: Any) -> Any:
        if hasattr(self.t.nn.functional, "rms_norm"):  # torch >= 2.4
            return self.t.nn.functional.rms_norm(x, (x.shape[-1],), weight, 1e-5)
        xf = x.float()
        return (xf * self.t.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * weight

    def _rope(self, x: Any, cos: Any, sin: Any) -> Any:  # x [T, heads, D]; cos/sin [T, 1, D/2]
        x1, x2 = x.chunk(2, dim=-1)
        return self.t.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def prepare(self, point: Point) -> Callable[[], Any]:
        """Allocate the step's inputs and KV caches; return the forward step as a closure."""
        t, s = self.t, self.shape
        d, hq, hkv = s.head_dim, s.num_attention_heads, s.num_kv_heads
        groups, positions, last = [], [], []
        offset = 0
        for n, e, c in point.chunks():
            caches = [(t.randn(n, hkv, c + e, d, device=self.device, dtype=self.dtype),
                       t.randn(n, hkv, c + e, d, device=self.device, dtype=self.dtype)) for _ in range(s.num_layers)]
            mask = _prefix_bias(t, e, c, self.device) if e > 1 and c > 0 else None
            groups.append((n, e, c, caches, mask, e > 1 and c == 0))
            positions.append((c + t.arange(e, device=self.device)).repeat(n))
            last.append(offset + e * (t.arange(n, device=self.device) + 1) - 1)
            offset += n * e
        pos = t.cat(positions)
        inv_freq = 1.0 / (500000.0 ** (t.arange(0, d, 2, device=self.device, dtype=t.float32) / d))
        angles = pos.float()[:, None] * inv_freq[None, :]
        cos, sin = (angles.cos()[:, None, :].to(self.dtype), angles.sin()[:, None, :].to(self.dtype))
        tokens = t.randint(0, s.vocab_size, (offset,), device=self.device)
        last_idx = t.cat(last)
        sdpa = t.nn.functional.scaled_dot_product_attention

        def attend(q: Any, k: Any, v: Any, mask: Any, causal: bool) -> Any:
            # enable_gqa (torch >= 2.5) reads each KV head once; kernels that take a mask may not support it, so
            # masked steps (prefill after cached context) expand the KV heads instead
            if hq != hkv and (mask is not None or not self.gqa_kwarg):
                k, v = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)
            extra = {"enable_gqa": True} if hq != hkv and mask is None and self.gqa_kwarg else {}
            return sdpa(q, k, v, attn_mask=mask, is_causal=causal, **extra)

        def forward() -> Any:
            x = self.embed[tokens]
            for li, layer in enumerate(self.layers):
                qkv = self._rms(x, layer["norm1"]) @ layer["qkv"]
                q, k, v = qkv.split([s.q_dim, s.kv_dim, s.kv_dim], dim=-1)
                q = self._rope(q.view(-1, hq, d), cos, sin)
                k = self._rope(k.view(-1, hkv, d), cos, sin)
                v = v.view(-1, hkv, d)
                outs, at = [], 0
                for n, e, c, caches, mask, causal in groups:
                    kc, vc = caches[li]
                    kc[:, :, c:] = k[at:at + n * e].view(n, e, hkv, d).transpose(1, 2)
                    vc[:, :, c:] = v[at:at + n * e].view(n, e, hkv, d).transpose(1, 2)
                    qg = q[at:at + n * e].view(n, e, hq, d).transpose(1, 2)
                    outs.append(attend(qg, kc, vc, mask, causal).transpose(1, 2).reshape(n * e, hq * d))
                    at += n * e
                x = x + (outs[0] if len(outs) == 1 else t.cat(outs)) @ layer["o"]
                gate, up = (self._rms(x, layer["norm2"]) @ layer["gate_up"]).chunk(2, dim=-1)
                x = x + (t.nn.functional.silu(gate) * up) @ layer["down"]
            logits = self._rms(x[last_idx], self.norm_f) @ self.lm_head
            return logits.argmax(dim=-1)

        return forward


def _cuda_graph(torch: Any, forward: Callable[[], Any], warmup: int) -> Callable[[], Any]:
    """The forward step captured into a CUDA graph (raises if capture fails)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(max(1, warmup)):
            forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    return graph.replay


def resolve_device(torch: Any, device: str, dtype: str) -> tuple[str, Any]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    if not hasattr(torch, dtype):
        raise ValueError(f"unknown torch dtype {dtype!r}")
    return device, getattr(torch, dtype)


def _time_point(torch: Any, runner: _Runner, point: Point, grid: ProfileGrid, cuda: bool, cuda_graphs: bool,
                clock: Callable[[], float], notes: list[str]) -> list[float]:
    """Seconds of ``grid.repetitions`` runs of one step, after ``grid.warmup`` untimed ones."""
    forward = runner.prepare(point)
    if cuda and cuda_graphs and point.prefill_tokens == 0:
        try:
            forward = _cuda_graph(torch, forward, grid.warmup)
        except RuntimeError as exc:
            notes.append(f"{point.chunks()}: CUDA graph capture failed, timed eagerly ({exc})")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(grid.warmup):
        forward()
    times = []
    for _ in range(grid.repetitions):
        sync()
        t0 = clock()
        forward()
        sync()
        times.append(clock() - t0)
    return times


def profile_steps(
    shape: ModelProfile, grid: ProfileGrid, *, device: str = "auto", dtype: str = "auto", seed: int = 0,
    max_kv_gib: float | None = None, cuda_graphs: bool = True, threads: int | None = None,
    clock: Literal["wall", "cpu"] = "wall", on_point: Callable[[int, int, StepRow], None] | None = None,
) -> ProfileResult:
    """Time every point of ``grid`` on ``device``; rows come back in grid order.

    Each pass measures the points in a fresh seeded shuffle, so slow drift or a burst of load on the machine
    does not line up with the grid; a point's time is ``grid.statistic`` over all its runs of all passes.
    ``threads`` sets torch's CPU threads (on a shared machine 1 thread is far steadier: a preempted thread
    stalls a multi-threaded op). ``clock="cpu"`` times each run by the CPU time of the calling thread instead of
    the wall clock: on a CPU shared with other work that is the step's own work, without the time the thread
    waited for a core (only with one torch thread on the CPU).
    """
    torch = import_torch()
    if threads is not None:
        torch.set_num_threads(threads)
    dev, dt = resolve_device(torch, device, dtype)
    torch.set_flush_denormal(True)
    cuda = dev.startswith("cuda")
    if clock == "cpu" and (cuda or torch.get_num_threads() != 1):
        raise ValueError("clock='cpu' times one thread: use it on the CPU with threads=1")
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    kv_token_bytes = 2 * shape.num_layers * shape.kv_dim * torch.tensor([], dtype=dt).element_size()
    rng = random.Random(seed)
    with torch.inference_mode():
        runner = _Runner(torch, shape, dev, dt, seed)
        if max_kv_gib is None:
            max_kv_gib = (torch.cuda.mem_get_info()[0] * 0.8 if cuda else 4 * 2**30) / 2**30
        points = grid.points()
        notes: list[str] = []
        fits = [i for i, p in enumerate(points) if p.kv_tokens() * kv_token_bytes <= max_kv_gib * 2**30]
        notes += [f"{points[i].chunks()}: KV cache over {max_kv_gib:.1f} GiB, not measured"
                  for i in range(len(points)) if i not in fits]
        times: dict[int, list[float]] = {i: [] for i in fits}
        done = 0
        for _ in range(grid.passes):
            order = list(fits)
            rng.shuffle(order)
            for i in order:
                try:
                    times[i] += _time_point(torch, runner, points[i], grid, cuda, cuda_graphs, timer, notes)
                except torch.cuda.OutOfMemoryError:
                    notes.append(f"{points[i].chunks()}: out of GPU memory, not measured")
                if cuda:
                    torch.cuda.empty_cache()  # the next step's KV caches may be of another size
                done += 1
                if on_point is not None and times[i]:
                    on_point(done, len(fits) * grid.passes, _row(points[i], times[i], grid.statistic))
    where = f"threads={torch.get_num_threads()}" if not cuda else torch.cuda.get_device_name(dev)
    desc = (f"{dev} ({where}, {platform.machine()}), torch {torch.__version__}, {str(dt).removeprefix('torch.')}, "
            f"clock={'thread CPU time' if clock == 'cpu' else 'wall'}")
    kept = [i for i in fits if times[i]]
    rows = [_row(points[i], times[i], grid.statistic) for i in kept]
    spreads = [(max(times[i]) - min(times[i])) / statistics.median(times[i]) for i in kept]
    return ProfileResult(rows, desc, spreads, notes)


def _row(point: Point, times: list[float], statistic: str) -> StepRow:
    return point.row(statistics.median(times) if statistic == "median" else min(times))
