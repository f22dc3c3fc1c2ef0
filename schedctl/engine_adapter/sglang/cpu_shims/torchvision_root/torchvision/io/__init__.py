"""Stand-in for torchvision.io (see cpu_shims/README.md): ImageReadMode; functions raise."""

from enum import Enum

from schedctl.engine_adapter.sglang.cpu_shims import unavailable


class ImageReadMode(Enum):
    UNCHANGED = 0
    GRAY = 1
    GRAY_ALPHA = 2
    RGB = 3
    RGB_ALPHA = 4
    RGBA = 4


def __getattr__(name: str) -> object:
    if name.startswith("__"):
        raise AttributeError(name)
    return unavailable("torchvision.io", name)
