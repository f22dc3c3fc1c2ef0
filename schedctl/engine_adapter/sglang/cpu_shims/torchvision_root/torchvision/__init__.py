"""Stand-in for torchvision on a CPU-only machine (see cpu_shims/README.md).

SGLang 0.5.23 imports torchvision at module level (``srt/multimodal/internvl_utils.py``), and transformers imports a
few of its names once it sees the package (``image_utils.py``: ``torchvision.io``, ``transforms.v2.functional``).
torchvision has no CPU wheel matching torch 2.13.0, and installing it would replace torch with a CUDA build. This
stand-in defines those names; anything that would really use torchvision raises.
"""

from schedctl.engine_adapter.sglang.cpu_shims import unavailable

__version__ = "0.0.0+schedctl.cpu_shim"


def __getattr__(name: str) -> object:
    if name.startswith("__"):
        raise AttributeError(name)
    return unavailable("torchvision", name)
