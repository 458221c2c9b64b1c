"""User-facing error types: each carries a one-line message the CLI prints before exiting 2."""


class SlimccError(Exception):
    """A failure the user can act on (bad input, refused rewrite, failed verification)."""


class ModelLoadError(SlimccError):
    """The model file is missing, unreadable, malformed or unsafe."""


class PipelineError(SlimccError):
    """A pipeline text names an unknown pass or gives an invalid option."""


class PassError(SlimccError):
    """A pass failed or broke the model; the message names the pass and what ran before it."""


class VerificationError(SlimccError):
    """A rewritten model does not match the original within tolerance."""


class PassVerificationError(PassError, VerificationError):
    """A pass's rewrite failed its verification check; the message names the pass."""
