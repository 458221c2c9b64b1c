"""The `slimcc` command line. Each subcommand lives in `slimcc/commands/<name>.py`.

Exit codes: 0 success; 2 bad input or a refused/failed step (one line on stderr);
130 interrupted. Never a traceback unless SLIMCC_DEBUG=1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from slimcc import __version__
from slimcc.errors import SlimccError

COMMAND_MODULES = (
    "demo", "compress", "inspect", "passes", "optimize", "prune_plan", "quant_plan", "compare", "compile", "run",
    "tune", "tune_merge",
)

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 130


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message):
        raise SlimccError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available subcommand."""
    parser = OneLineParser(prog="slimcc", description="Compress ONNX CNNs with graph passes and compile them with TVM.")
    parser.add_argument("--version", action="version", version=f"slimcc {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"slimcc.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"slimcc.commands.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `slimcc` console script."""
    debug = os.environ.get("SLIMCC_DEBUG") == "1"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_BAD_INPUT
        return int(args.func(args) or EXIT_OK)
    except SlimccError as exc:
        if debug:
            raise
        print(f"slimcc: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # the reader went away (e.g. `slimcc passes | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("slimcc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("slimcc: error: out of memory (input too large?)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # last line of defence: one line, never a traceback
        if debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"slimcc: error: internal error {type(exc).__name__}: {message[:300]} "
              "(rerun with SLIMCC_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
