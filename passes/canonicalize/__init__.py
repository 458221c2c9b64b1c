"""Canonicalization passes: each registered on its own and composed by `canonicalize`."""

from slimcc.passes.canonicalize import (constant_to_initializer, fold_batchnorm, fold_constants,  # noqa: F401
                                        fold_scale_bias, lower_recurrent, remove_identity,
                                        upgrade_opset)
from slimcc.passes.canonicalize.canonicalize import Canonicalize

__all__ = ["Canonicalize"]
