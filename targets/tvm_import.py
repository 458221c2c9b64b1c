"""Import TVM without dragging in PyTorch, with a thread pool as large as the CPUs it may use.

apache-tvm-ffi 0.1.x imports torch (when installed) on its own import to dodge a Windows-only
symbol clash; on Linux that only costs seconds (tens of seconds on a loaded machine) per
process. Hiding torch during TVM's import avoids it; torch stays importable afterwards.

TVM's runtime starts half the logical CPUs as threads unless told otherwise (it assumes two
hardware threads per core): on the 2-core reference machine, kernels built for `--num-cores 2`
ran on one thread. Unless TVM_NUM_THREADS or OMP_NUM_THREADS says otherwise, the pool gets
every CPU this process may run on; kernels built for one core have no parallel loops anyway.
"""

from __future__ import annotations

import os
import sys


def ensure_tvm():
    """Import and return the `tvm` package (call before any `import tvm` inside slimcc.targets)."""
    if "tvm" in sys.modules:
        return sys.modules["tvm"]
    if not os.environ.get("TVM_NUM_THREADS") and not os.environ.get("OMP_NUM_THREADS"):
        os.environ["TVM_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
    hidden = "torch" not in sys.modules
    if hidden:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tvm_ffi ignores
    try:
        import tvm
    finally:
        if hidden and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm
