"""Stand-in for torchvision.transforms (see cpu_shims/README.md): InterpolationMode, and functions that raise."""

from enum import Enum

from schedctl.engine_adapter.sglang.cpu_shims import unavailable


class InterpolationMode(Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def __getattr__(name: str) -> object:  # Compose, Resize, ToTensor, ...: usable only to fail
    if name.startswith("__"):
        raise AttributeError(name)
    return unavailable("torchvision.transforms", name)
