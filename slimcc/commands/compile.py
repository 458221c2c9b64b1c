"""`slimcc compile MODEL --target x86|arm|cuda -o DIR`: canonicalize, compile with TVM, write an artifact.

The artifact folder holds the exported library and manifest.json; it is written atomically,
so DIR appears only when the build succeeded.
"""

from __future__ import annotations

from pathlib import Path

from slimcc.commands.common import add_model_arguments, print_json
from slimcc.ir.model import parse_input_shapes
from slimcc.targets.target import TARGET_NAMES


def add_parser(sub) -> None:
    """Register the `compile` subcommand."""
    parser = sub.add_parser("compile", help="compile a model with TVM into an artifact folder (.so + manifest)",
                            description="Canonicalize MODEL (static shapes), compile it with Apache TVM for "
                                        "x86, arm (aarch64 Linux) or cuda, and write DIR/model.so + DIR/manifest.json.")
    add_model_arguments(parser)
    parser.add_argument("--target", choices=TARGET_NAMES, default="x86", help="x86 (this CPU), arm or cuda")
    parser.add_argument("--mcpu", metavar="CPU", help="LLVM CPU name (default: this machine's for x86)")
    parser.add_argument("--num-cores", type=int, metavar="N", help="threads the x86 runtime may use")
    parser.add_argument("--cuda-arch", metavar="sm_XX", help="CUDA compute capability (default: local GPU or sm_80)")
    tuned = parser.add_mutually_exclusive_group()
    tuned.add_argument("--tuned", metavar="DB", help="apply this MetaSchedule database (from `slimcc tune --db`)")
    tuned.add_argument("--untuned", action="store_true",
                       help="ignore the default tuning database of this model/target even if it exists")
    parser.add_argument("--int8-mode", choices=("real", "fake"), default=None,
                        help="Q/DQ models: 'real' (default) compiles integer kernels, 'fake' keeps float Q/DQ "
                             "(replaces the deprecated SLIMCC_TVM_INT8 variable)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="artifact folder to write")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Handler: compile and report the artifact."""
    from slimcc.targets.compiler import compile_file

    tuned = args.tuned if args.tuned else (False if args.untuned else None)
    manifest = compile_file(args.model, args.target, output_dir=Path(args.output),
                            input_shapes=parse_input_shapes(args.input_shape), tuned=tuned, mcpu=args.mcpu,
                            num_cores=args.num_cores, cuda_arch=args.cuda_arch,
                            int8_mode=args.int8_mode)
    if args.json:
        print_json(manifest.as_dict())
    else:
        db = manifest.build.get("tuning_database")
        tuned_text = (f", {manifest.build.get('tuned_kernels', 0)}/{manifest.build.get('kernels', '?')} kernels tuned "
                      f"from {db}" if db else ", untuned")
        print(f"wrote {args.output}/ ({manifest.target['name']} {manifest.target['tvm']}{tuned_text})")
    return 0
