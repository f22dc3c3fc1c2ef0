"""GPU and model profiles: the datasheet numbers the step-time model turns into seconds.

Profiles are TOML tables in ``config/gpus.toml`` and ``config/models.toml`` (one table per GPU or model,
keyed by a short name such as ``h100-sxm`` or ``llama-3.1-8b``). Derived quantities (parameters, weight bytes,
KV bytes per token, KV capacity) are computed here, once.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from schedctl.files import InputFileError, model_from_dict, read_toml


def config_dir() -> Path:
    """Where the shipped settings live: $SCHEDCTL_CONFIG_DIR, else the copy in the wheel, else the repo's."""
    env = os.environ.get("SCHEDCTL_CONFIG_DIR")
    if env:
        return Path(env)
    bundled = Path(__file__).resolve().parents[1] / "_config"
    if bundled.is_dir():
        return bundled
    return Path(__file__).resolve().parents[2] / "config"


class GPUProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    memory_gb: float = Field(gt=0)
    peak_bf16_tflops: float = Field(gt=0)
    memory_bandwidth_gbps: float = Field(gt=0)
    compute_efficiency: float = Field(gt=0, le=1)
    memory_efficiency: float = Field(gt=0, le=1)
    step_overhead_s: float = Field(ge=0)
    tile_tokens: int = Field(default=128, ge=1)
    price_per_hour_usd: float | None = Field(default=None, ge=0)
    max_available: int | None = Field(default=None, ge=0)

    @property
    def peak_flops(self) -> float:
        return self.peak_bf16_tflops * 1e12

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.memory_bandwidth_gbps * 1e9


class ModelProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    intermediate_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    tied_embeddings: bool = False
    dtype_bytes: int = Field(default=2, ge=1)

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def layer_matmul_params(self) -> int:
        """Weights every new token multiplies through, all layers (attention projections + gated MLP)."""
        h = self.hidden_size
        per_layer = 2 * h * self.q_dim + 2 * h * self.kv_dim + 3 * h * self.intermediate_size
        return self.num_layers * per_layer

    @property
    def lm_head_params(self) -> int:
        return self.hidden_size * self.vocab_size

    @property
    def total_params(self) -> int:
        embed = self.vocab_size * self.hidden_size
        return self.layer_matmul_params + embed + (0 if self.tied_embeddings else self.lm_head_params)

    @property
    def weight_bytes(self) -> int:
        return self.total_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.kv_dim * self.dtype_bytes


def kv_capacity_tokens(gpu: GPUProfile, model: ModelProfile, mem_fraction: float = 0.88) -> int:
    """KV-cache tokens that fit beside the weights in ``mem_fraction`` of GPU memory (SGLang's default share)."""
    free = gpu.memory_gb * 1e9 * mem_fraction - model.weight_bytes
    if free <= 0:
        raise ValueError(f"{model.name} ({model.weight_bytes / 1e9:.1f} GB of weights) does not fit on {gpu.name}")
    return int(free // model.kv_bytes_per_token)


@cache
def _catalog(path: Path, kind: str) -> dict[str, BaseModel]:
    data = read_toml(path)
    model: type[BaseModel] = GPUProfile if kind == "gpu" else ModelProfile
    return {key: model_from_dict(model, table, path, prefix=f"{key}.") for key, table in data.items()}


def _lookup(kind: str, key: str, path: str | os.PathLike[str] | None) -> BaseModel:
    file = Path(path) if path is not None else config_dir() / ("gpus.toml" if kind == "gpu" else "models.toml")
    catalog = _catalog(file.resolve(), kind)
    if key not in catalog:
        raise InputFileError(file, key, f"no such {kind} (known: {', '.join(sorted(catalog))})")
    return catalog[key]


def load_gpu(key: str, path: str | os.PathLike[str] | None = None) -> GPUProfile:
    gpu = _lookup("gpu", key, path)
    assert isinstance(gpu, GPUProfile)
    return gpu


def load_model(key: str, path: str | os.PathLike[str] | None = None) -> ModelProfile:
    model = _lookup("model", key, path)
    assert isinstance(model, ModelProfile)
    return model


def known_gpus(path: str | os.PathLike[str] | None = None) -> list[str]:
    file = Path(path) if path is not None else config_dir() / "gpus.toml"
    return sorted(_catalog(file.resolve(), "gpu"))


def known_models(path: str | os.PathLike[str] | None = None) -> list[str]:
    file = Path(path) if path is not None else config_dir() / "models.toml"
    return sorted(_catalog(file.resolve(), "model"))
