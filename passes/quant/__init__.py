"""slimcc.passes.quant: int8 calibration, Q/DQ insertion, propagation, cancellation, lowering, clustering."""

from slimcc.passes.quant import (cluster_weights, qdq_cancel, qdq_insert, qdq_lower, qdq_propagate,  # noqa: F401
                                 softmax_transpose)
