"""slimcc.passes.quant: int8 calibration, Q/DQ insertion, propagation, cancellation, lowering, clustering."""

from slimcc.passes.quant import (align_channels, cluster_weights, qdq_cancel, qdq_insert, qdq_lower,  # noqa: F401
                                 qdq_propagate, softmax_transpose)
