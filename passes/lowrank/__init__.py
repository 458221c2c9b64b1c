"""slimcc.passes.lowrank: low-rank decomposition passes (Tucker-2 three convs, SVD two/three factors).

Importing the package registers `decompose-tucker` and `decompose-svd`.
"""

from slimcc.passes.lowrank import decompose_tucker  # noqa: F401  (registers decompose-tucker)
from slimcc.passes.lowrank import decompose_svd  # noqa: F401  (registers decompose-svd)
