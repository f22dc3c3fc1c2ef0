"""Stand-in for torchvision.transforms.v2 (see cpu_shims/README.md): every function raises."""

from schedctl.engine_adapter.sglang.cpu_shims import unavailable
from torchvision.transforms import InterpolationMode

__all__ = ["InterpolationMode"]


def __getattr__(name: str) -> object:
    if name.startswith("__"):
        raise AttributeError(name)
    return unavailable("torchvision.transforms.v2", name)
