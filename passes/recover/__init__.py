"""slimcc.passes.recover: accuracy recovery from calibration data (bias correction, least-squares refit)
and block-wise distillation (needs the `train` extra)."""

from slimcc.passes.recover import recover_bias  # noqa: F401  (registers recover-bias)
from slimcc.passes.recover import recover_lstsq  # noqa: F401,E402  (registers recover-lstsq)
from slimcc.passes.recover import distill  # noqa: F401,E402  (registers distill; torch is imported when it runs)
