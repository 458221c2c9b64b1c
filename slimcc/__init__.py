"""slimcc: compress ONNX CNNs with graph passes and compile them with Apache TVM.

The heavy submodules are imported lazily so that `import slimcc` stays cheap.
"""

__version__ = "0.1.0"

_API_NAMES = {"compress", "compile", "Pipeline", "register_pass", "load", "save"}


def __getattr__(name):
    if name in _API_NAMES:
        from slimcc import api

        return getattr(api, name)
    raise AttributeError(f"module 'slimcc' has no attribute {name!r}")
