"""slimcc.passes.quant: int8 calibration, Q/DQ insertion and placement, propagation, cancellation,
lowering, clustering, cross-layer equalization."""

from slimcc.passes.quant import (align_channels, cluster_weights, equalize, qdq_cancel, qdq_insert,  # noqa: F401
                                 qdq_lower, qdq_propagate, softmax_transpose)
