"""`slimcc run DIR --input NAME=FILE.npy -o OUT.npz`: run a compiled artifact here or over TVM RPC."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slimcc.commands.common import print_table
from slimcc.errors import SlimccError


def add_parser(sub) -> None:
    """Register the `run` subcommand."""
    parser = sub.add_parser("run", help="run a compiled artifact and save its outputs",
                            description="Run an artifact folder made by `slimcc compile`, locally or on a remote "
                                        "device through TVM RPC, and write its outputs into OUT.npz keyed by name.")
    parser.add_argument("artifact", metavar="DIR", help="artifact folder")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                        help="an input tensor from a .npy file (repeat for each input)")
    remote = parser.add_mutually_exclusive_group()
    remote.add_argument("--rpc", metavar="HOST:PORT", help="run on the TVM RPC server at HOST:PORT")
    remote.add_argument("--tracker", metavar="HOST:PORT", help="request a device from a TVM RPC tracker")
    parser.add_argument("--key", metavar="K", help="device key for --tracker")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="where to write the outputs")
    parser.set_defaults(func=run)


def read_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    """Parse NAME=FILE.npy options and load the arrays (never pickles)."""
    feeds = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SlimccError(f"--input {spec!r}: expected NAME=FILE.npy")
        if name in feeds:
            raise SlimccError(f"--input {name} given twice")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise SlimccError(f"--input {name}: file {path} not found") from None
        except (OSError, ValueError) as exc:
            raise SlimccError(f"--input {name}: {path} is not a readable .npy array ({exc})") from None
        if not isinstance(feeds[name], np.ndarray):
            raise SlimccError(f"--input {name}: {path} holds several arrays; give one .npy file per input")
    return feeds


def open_session(args):
    """The RPC session the options ask for, or None to run locally."""
    if args.key and not args.tracker:
        raise SlimccError("--key needs --tracker HOST:PORT")
    if args.rpc:
        from slimcc.targets.rpc import connect, parse_address

        return connect(*parse_address(args.rpc))
    if args.tracker:
        if not args.key:
            raise SlimccError("--tracker needs --key K (the device key registered with the tracker)")
        from slimcc.targets.rpc import DEFAULT_TRACKER_PORT, connect_tracker, parse_address

        return connect_tracker(*parse_address(args.tracker, DEFAULT_TRACKER_PORT), args.key)
    return None


def run(args) -> int:
    """Handler: load inputs, run the artifact, write OUT.npz atomically."""
    from slimcc.ir.atomic import save_npz_atomic
    from slimcc.targets.artifact import read_manifest
    from slimcc.targets.runner import check_feeds, run_artifact

    output = Path(args.output)
    if output.suffix != ".npz":
        raise SlimccError(f"-o {output}: the output file must end in .npz")
    if not (output.parent if str(output.parent) else Path(".")).is_dir():
        raise SlimccError(f"output folder {output.parent} does not exist")
    manifest = read_manifest(args.artifact)
    feeds = read_inputs(args.input)
    check_feeds(manifest, feeds)
    outputs = run_artifact(args.artifact, feeds, session=open_session(args))
    save_npz_atomic(output, outputs)
    if not getattr(args, "quiet", False):
        print_table(["output", "shape", "dtype"], [[k, "x".join(map(str, v.shape)), v.dtype] for k, v in outputs.items()])
        print(f"wrote {output}")
    return 0
