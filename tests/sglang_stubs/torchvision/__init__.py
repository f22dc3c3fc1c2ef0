"""Stand-in for torchvision, for importing SGLang's scheduler code on a CPU-only machine (tests only).

SGLang 0.5.23 imports torchvision at module level (srt/multimodal/internvl_utils.py), and transformers imports a
few of its names once it sees the package. torchvision has no CPU wheel matching torch 2.13.0, and installing it
would replace torch with a CUDA build. This stand-in defines only those names; anything that would really use
torchvision raises. scripts/test-sglang.sh puts tests/sglang_stubs on PYTHONPATH for the `sglang` tests.
"""

__version__ = "0.0.0+schedctl.stub"


def _unavailable(*_args: object, **_kwargs: object) -> object:
    raise RuntimeError("torchvision is a stand-in here (tests/sglang_stubs): no image operations")
