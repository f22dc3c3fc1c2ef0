"""Stand-in for ``sgl_kernel`` on a CPU without its kernels (see cpu_shims/README.md).

SGLang 0.5.23 imports ``copy_all_layer_kv_cache_cpu`` from it at module level when the CPU engine is on
(``kernels/ops/kvcache/cache_move.py``). Any name can be imported; calling it raises.
"""

from schedctl.engine_adapter.sglang.cpu_shims import unavailable

__version__ = "0.0.0+schedctl.cpu_shim"


def __getattr__(name: str) -> object:
    if name.startswith("__"):
        raise AttributeError(name)
    return unavailable("sgl_kernel", name)
