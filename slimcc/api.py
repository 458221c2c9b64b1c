"""The Python API: load, optimize/compress and compile a model in a few lines.

    import slimcc
    small, pipeline = slimcc.compress("model.onnx", macs=0.5, calibration="calib.npz")
    slimcc.save(small, "small.onnx")
    slimcc.compile(small, target="x86", output_dir="small-x86")

    model = slimcc.load("model.onnx", input_shapes={"x": [1, 3, 224, 224]})
    slimcc.Pipeline.from_spec("canonicalize,prune-channels{macs=0.6}").run(model)

Models are a path, an onnx.ModelProto or a loaded slimcc Model; calibration is a dict of
arrays (or a list of such batches), an .npz path, an image folder, an onnxruntime-style
CalibrationDataReader (anything with `get_next()`), or a CalibrationData.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimcc.errors import VerificationError
from slimcc.ir.model import Model, load_model, save_model
from slimcc.passes.base import Pass, PassContext, register_pass
from slimcc.passes.manager import ManagerReport, PassManager
from slimcc.passes.pipeline import format_pipeline, parse_pipeline

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

    def run(self, model, *, calibration: Any = None, input_shapes=None, progress: bool = False,
            seed: int = 0) -> ManagerReport:
        """Run the passes over `model` and return the report.

        A Model is edited in place. Give a path or ModelProto only when the report is all you
        need; otherwise load it first with `slimcc.load` and keep the Model.
        """
        model = load(model, input_shapes)
        ctx = PassContext(calibration=as_calibration(calibration, model), progress=progress, seed=seed)
        report = PassManager(self.passes, verify_each=self.verify_each, fixpoint=self.fixpoint).run(model, ctx)
        model.refresh_shapes()
        self.history.append(report)
        return report


def compress(model, *, macs: float | None = None, rank_speedup: float | None = None, int8: bool = False,
             calibration: Any = None, input_shapes=None, max_error: float | None = None) -> tuple[Model, str]:
    """The common compression path (same plan as `slimcc compress`).

    Returns (compressed copy, the pipeline text it ran); the input model is not modified.
    With `max_error`, raises VerificationError when an output's relative error against the
    original exceeds it (on random inputs plus the first calibration batches).
    """
    from slimcc.compress_plan import plan

    original = load(model, input_shapes)
    work = original.copy()
    calib = as_calibration(calibration, work)
    text = plan(macs=macs, rank_speedup=rank_speedup, int8=int8, has_calibration=calib is not None).text
    Pipeline.from_spec(text).run(work, calibration=calib)
    if max_error is not None:
        check_error(original, work, calib, max_error)
    return work, text


def check_error(reference: Model, candidate: Model, calib, max_error: float) -> None:
    """Raise VerificationError when `candidate` drifts from `reference` by more than `max_error` (relative)."""
    from slimcc.ir.verify import compare_models, random_feeds

    feeds = [random_feeds(reference, seed=0)] + (list(calib.batches[:8]) if calib is not None else [])
    report = compare_models(reference, candidate, feeds)
    if report.max_rel > max_error:
        raise VerificationError(f"compressed model differs from the original: relative error "
                                f"{report.max_rel:.3g} > {max_error:g}")


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
