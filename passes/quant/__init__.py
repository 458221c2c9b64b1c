"""slimcc.passes.quant: int8 calibration, Q/DQ insertion and placement, propagation, cancellation,
lowering, clustering, cross-layer and activation-range equalization."""

from slimcc.passes.quant import (activation_equalize, align_channels, cluster_weights, equalize,  # noqa: F401
                                 qdq_cancel, qdq_insert, qdq_lower, qdq_propagate, softmax_transpose)
