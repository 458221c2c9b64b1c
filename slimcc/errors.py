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


def exit_status(body) -> int:
    """Run `body()` for a command-line entry point: its status (0 when it returns None); 2, with
    the error on one stderr line, when it raises a SlimccError."""
    import sys

    try:
        status = body()
    except SlimccError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return status or 0
