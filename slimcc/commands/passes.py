"""`slimcc passes`: every registered pass with its one-line doc and typed options."""

from __future__ import annotations

import argparse

from slimcc.commands.common import print_json
from slimcc.passes.base import format_option, options_of, registry


def add_parser(sub) -> None:
    """Register the `passes` subcommand."""
    parser = sub.add_parser("passes", help="list registered passes with their options",
                            description="List every registered pass, its one-line doc and its typed options.")
    parser.add_argument("--json", action="store_true", help="print a JSON document")
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def catalogue() -> list[dict]:
    """The registry as JSON-ready dicts: name, doc, exact, needs_calibration, options."""
    entries = []
    for name, cls in registry().items():
        entries.append({
            "name": name,
            "doc": cls.summary(),
            "exact": bool(cls.exact),
            "needs_calibration": bool(cls.needs_calibration),
            "options": [{"name": o.name, "type": o.type_name, "default": _jsonable(o.default),
                         "choices": list(o.choices) if o.choices else None} for o in options_of(cls)],
        })
    return entries


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return format_option(value)


def run(args) -> int:
    """Handler of `slimcc passes`."""
    entries = catalogue()
    if args.json:
        print_json(entries)
        return 0
    for entry in entries:
        flags = ("exact" if entry["exact"] else "lossy") + (", needs --calib" if entry["needs_calibration"] else "")
        print(f"{entry['name']}  ({flags})")
        print(f"    {entry['doc']}")
        for opt in entry["options"]:
            value = opt["default"]
            default = "" if value is None else " = " + (format_option(value) if value != "" else '""')
            print(f"    {opt['name']}: {opt['type']}{default}")
    return 0
