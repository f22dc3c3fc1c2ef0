"""schedctl beside SGLang: the plugin (inside every scheduler rank), the adapter (HTTP, in the sidecar), the launcher.

Supported SGLang versions: 0.5.23 (see ``plugin.SUPPORTED_SGLANG_VERSIONS``). Nothing here imports SGLang at
module level.
"""
