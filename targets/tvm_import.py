"""Import TVM without dragging in PyTorch.

apache-tvm-ffi 0.1.x imports torch (when installed) on its own import to dodge a Windows-only
symbol clash; on Linux that only costs seconds (tens of seconds on a loaded machine) per
process. Hiding torch during TVM's import avoids it; torch stays importable afterwards.
"""

from __future__ import annotations

import sys


def ensure_tvm():
    """Import and return the `tvm` package (call before any `import tvm` inside slimcc.targets)."""
    if "tvm" in sys.modules:
        return sys.modules["tvm"]
    hidden = "torch" not in sys.modules
    if hidden:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tvm_ffi ignores
    try:
        import tvm
    finally:
        if hidden and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm
