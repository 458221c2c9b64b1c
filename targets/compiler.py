"""One-call compilation: ONNX file -> canonicalized static IR -> artifact folder for a target.

This is what `slimcc compile` and `slimcc.compile` run. The model is canonicalized by slimcc
itself (static shapes, folded shape sub-graphs) because TVM's importer needs that.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from slimcc.errors import SlimccError
from slimcc.ir.model import Model, load_model
from slimcc.targets.artifact import Manifest, manifest_for, staging_folder, write_manifest
from slimcc.targets.build import LIBRARY_NAME, build_isolated, build_library
from slimcc.targets.target import TargetSpec


def prepare_model(source, input_shapes: dict[str, list[int]] | None = None, *, canonicalize: bool = True) -> Model:
    """Load a model (path, ModelProto or Model) and canonicalize it so every shape is static
    (skipped when canonicalize left it so and nothing changed it since)."""
    model = source.copy() if isinstance(source, Model) else load_model(source, input_shapes)
    if canonicalize:
        from slimcc.passes.canonicalize import Canonicalize

        if not Canonicalize().is_canonical(model):
            Canonicalize().run(model)
            model.refresh_shapes()
    return model


def compile_model(model: Model, spec: TargetSpec, out_dir: str | Path, *, database_dir: str | Path | None = None,
                  isolate: bool | None = None, int8_mode: str | None = None) -> Manifest:
    """Compile a prepared model into the artifact folder `out_dir` (written atomically).

    `database_dir` applies a MetaSchedule tuning database. `isolate` (default: on unless
    SLIMCC_DEBUG=1) compiles in a child process so a TVM crash cannot take the caller down.
    `int8_mode`: "real" lowers Q/DQ layers to integer kernels, "fake" keeps TVM's float Q/DQ
    (None: "real", or the deprecated SLIMCC_TVM_INT8 variable when set).
    """
    spec = with_int8_mode(spec, int8_mode)
    if isolate is None:
        isolate = os.environ.get("SLIMCC_DEBUG") != "1"
    db = None
    if database_dir is not None:
        from slimcc.targets.tune import check_database

        db = str(check_database(database_dir))
    with staging_folder(Path(out_dir)) as staging:
        so_path = staging / LIBRARY_NAME
        build = build_isolated if isolate else build_library
        info = build(model, spec, so_path, database_dir=db)
        if not so_path.is_file():
            raise SlimccError(f"TVM produced no library for {spec.name}")
        manifest = manifest_for(model, spec.as_dict(), {**info, "tuning_database": db}, LIBRARY_NAME)
        write_manifest(staging, manifest)
    return manifest


def compile_file(source, target: str = "x86", *, output_dir: str | Path, input_shapes=None, tuned=None,
                 mcpu: str | None = None, num_cores: int | None = None, cuda_arch: str | None = None,
                 isolate: bool | None = None, int8_mode: str | None = None) -> Manifest:
    """Canonicalize `source` (path, ModelProto or Model) and compile it for `target` into `output_dir`.

    `tuned`: a tuning-database folder; None reuses the default database of this (model, target)
    when `slimcc tune` made one; False compiles untuned. `int8_mode`: see `compile_model`.
    """
    from slimcc.targets.target import make_target
    from slimcc.targets.tune import default_database, record_count

    model = prepare_model(source, input_shapes)
    spec = make_target(target, mcpu=mcpu, num_cores=num_cores, cuda_arch=cuda_arch, int8=is_int8(model))
    database = tuned
    if tuned is None:
        candidate = default_database(model, spec)
        database = candidate if record_count(candidate) else None
    elif tuned is False:
        database = None
    return compile_model(model, spec, output_dir, database_dir=database, isolate=isolate, int8_mode=int8_mode)


def with_int8_mode(spec: TargetSpec, int8_mode: str | None) -> TargetSpec:
    """`spec` carrying the resolved int8 lowering mode in its notes, which the (child) build reads."""
    from slimcc.targets.int8 import int8_mode as resolve_int8_mode

    return dataclasses.replace(spec, notes={**spec.notes, "int8_mode": resolve_int8_mode(int8_mode)})


def is_int8(model: Model) -> bool:
    """Whether the model carries int8 Q/DQ nodes (the ARM target then enables +dotprod)."""
    return any(node.op in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.nodes)
