from torchvision import _unavailable
from torchvision.transforms import InterpolationMode

__all__ = ["InterpolationMode", "pil_to_tensor"]

pil_to_tensor = _unavailable


def __getattr__(name: str) -> object:
    return _unavailable
