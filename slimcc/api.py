"""The Python API: load, optimize/compress and compile a model in a few lines.

    import slimcc
    small, pipeline = slimcc.compress("model.onnx", macs=0.5, calibration="calib.npz")
    slimcc.save(small, "small.onnx")
    slimcc.compile(small, target="x86", output_dir="small-x86")

    model = slimcc.load("model.onnx", input_shapes={"x": [1, 3, 224, 224]})
    slimcc.Pipeline.from_spec("canonicalize,prune-channels{macs=0.6}").run(model)  # verified

Every run goes through slimcc.passes.verified (the same gate as the CLI); `verify=False` opts out.

Models are a path, an onnx.ModelProto or a loaded slimcc Model; calibration is a dict of
arrays (or a list of such batches), an .npz path, an image folder, an onnxruntime-style
CalibrationDataReader (anything with `get_next()`), or a CalibrationData.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimcc.ir.model import Model, load_model, save_model
from slimcc.passes.base import Pass, PassContext, register_pass
from slimcc.passes.manager import ManagerReport
from slimcc.passes.pipeline import format_pipeline, parse_pipeline
from slimcc.passes.verified import run_verified

__all__ = ["load", "save", "Pipeline", "register_pass", "compile", "compress", "as_calibration"]


def load(model, input_shapes: dict[str, list[int]] | None = None) -> Model:
    """Load a path or onnx.ModelProto into slimcc's IR; a Model is returned as is (not copied)."""
    if isinstance(model, Model):
        return model
    return load_model(model, input_shapes)


def save(model: Model, path: str | Path) -> Path:
    """Write a model atomically after onnx.checker."""
    save_model(model, path)
    return Path(path)


def as_calibration(calibration, model: Model):
    """Turn arrays, a .npz path, an image folder or a CalibrationDataReader into CalibrationData."""
    if calibration is None:
        return None
    from slimcc.ir import calibration as calib

    if isinstance(calibration, calib.CalibrationData):
        return calibration
    if isinstance(calibration, (str, Path)):
        return calib.load_calibration(str(calibration), model)
    if hasattr(calibration, "get_next"):
        return calib.CalibrationData.from_reader(calibration, model)
    return calib.CalibrationData.from_arrays(calibration, model)


@dataclass
class Pipeline:
    """A configured sequence of passes, built from text or from Pass objects."""

    passes: list[Pass]
    verify_each: bool = False
    fixpoint: bool = False
    history: list[ManagerReport] = field(default_factory=list)

    @classmethod
    def from_spec(cls, text: str, **options) -> Pipeline:
        """Parse pipeline text such as `canonicalize,prune-channels{ratio=0.5}`."""
        return cls(parse_pipeline(text), **options)

    def spec(self) -> str:
        """The pipeline as text (re-parsable)."""
        return format_pipeline(self.passes)

    def run(self, model, *, calibration: Any = None, input_shapes=None, progress: bool = False, seed: int = 0,
            verify: bool = True, max_error: float | None = None, rollback: bool = False) -> ManagerReport:
        """Run the passes over `model` through the verified run and return the report.

        Verified by default (slimcc.passes.verified): exact passes must keep onnxruntime outputs
        equal, `max_error` bounds lossy ones against the original, and a refused run raises a
        one-line VerificationError/PassError and leaves the model unchanged. `verify=False` is the
        explicit opt-out. A Model is edited in place; give a path or ModelProto only when the
        report is all you need.
        """
        model = load(model, input_shapes)
        outcome = run_verified(model, self.passes, as_calibration(calibration, model), max_error=max_error,
                               seed=seed, progress=progress, verify=verify, rollback=rollback,
                               fixpoint=self.fixpoint, check_valid=verify or self.verify_each)
        self.history.append(outcome.report)
        return outcome.report


def compress(model, *, macs: float | None = None, rank_speedup: float | None = None, int8: bool = False,
             calibration: Any = None, input_shapes=None, max_error: float | None = None,
             verify: bool = True) -> tuple[Model, str]:
    """The common compression path (same plan and verified run as `slimcc compress`).

    Returns (compressed copy, the pipeline text it ran); the input model is not modified.
    Exact passes are checked one by one; with `max_error`, raises VerificationError when an
    output's relative error against the original exceeds it (on random inputs plus the first
    calibration batches). `verify=False` turns the checks off. Too little calibration data for
    the plan (`compress_plan.calibration_notes`) gives a UserWarning.
    """
    from slimcc.compress_plan import calibration_notes, plan

    original = load(model, input_shapes)
    work = original.copy()
    calib = as_calibration(calibration, work)
    planned = plan(macs=macs, rank_speedup=rank_speedup, int8=int8, has_calibration=calib is not None)
    text = planned.text
    for note in calibration_notes(planned, calib.samples) if calib is not None else []:
        warnings.warn(note, stacklevel=2)
    Pipeline.from_spec(text).run(work, calibration=calib, max_error=max_error, verify=verify)
    return work, text


def compile(model, target: str = "x86", *, output_dir: str | Path, input_shapes=None, tuned=None,
            **options) -> Path:
    """Compile a model with TVM into an artifact folder (model.so + manifest.json) and return its path.

    `target` is x86, arm or cuda; `tuned` a MetaSchedule database folder (None: the default
    database of `slimcc tune` when one exists; False: untuned); `options` go to
    `slimcc.targets.compiler.compile_file` (mcpu, num_cores, cuda_arch).
    """
    from slimcc.targets.compiler import compile_file

    source = model.copy() if isinstance(model, Model) else model
    compile_file(source, target, output_dir=output_dir, input_shapes=input_shapes, tuned=tuned, **options)
    return Path(output_dir)
