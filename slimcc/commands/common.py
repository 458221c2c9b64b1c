"""Argument helpers shared by several subcommands."""

from __future__ import annotations

import json
import sys


def add_model_arguments(parser) -> None:
    """MODEL and repeatable --input-shape NAME=D0,D1,..."""
    parser.add_argument("model", metavar="MODEL", help="ONNX model file")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                        help="fix a dynamic input shape (repeatable), e.g. x=1,3,224,224")


def print_json(data) -> None:
    """Write JSON to stdout (numbers as given, keys sorted for diffs)."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def print_table(headers: list[str], rows: list[list], *, stream=None) -> None:
    """A plain aligned text table."""
    stream = stream or sys.stdout
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        stream.write("  ".join(c.rjust(w) if index and _numeric(c) else c.ljust(w)
                               for c, w in zip(row, widths)).rstrip() + "\n")
        if index == 0:
            stream.write("  ".join("-" * w for w in widths) + "\n")


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("%x").replace(",", ""))
        return True
    except ValueError:
        return False
