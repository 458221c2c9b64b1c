"""slimcc.passes: pass infrastructure, the pattern matcher and the pass families.

Families register their passes on import; `load_builtin_passes()` imports them all.
"""

from __future__ import annotations

import importlib

from slimcc.passes.base import Pass, PassContext, PassResult, register_pass, registry

BUILTIN_MODULES = (
    "slimcc.passes.canonicalize",
    "slimcc.passes.prune",
    "slimcc.passes.lowrank",
    "slimcc.passes.quant",
    "slimcc.passes.recover",
)

_loaded = False


def load_builtin_passes() -> None:
    """Import every built-in pass family once so that they register themselves."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILTIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


__all__ = ["Pass", "PassContext", "PassResult", "register_pass", "registry", "load_builtin_passes"]
