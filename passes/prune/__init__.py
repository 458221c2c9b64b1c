"""slimcc.passes.prune: structured pruning (channel dependency analysis, importance, selection, apply)."""

from slimcc.passes.prune import prune_channels  # noqa: F401  (registers prune-channels)
from slimcc.passes.prune import prune_weights  # noqa: F401,E402  (registers prune-weights)
from slimcc.passes.prune import prune_kernel_shape  # noqa: F401,E402  (registers prune-kernel-shape)
