"""The Python API: load, optimize/compress and compile a model in a few lines.

    import slimcc
    model = slimcc.load("model.onnx", input_shapes={"x": [1, 3, 224, 224]})
    pipeline = slimcc.Pipeline.from_spec("canonicalize,prune-channels{macs=0.6}")
    report = pipeline.run(model, calibration="calib.npz")
    slimcc.save(model, "small.onnx")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimcc.ir.model import Model, load_model, save_model
from slimcc.passes.base import Pass, PassContext, register_pass
from slimcc.passes.manager import ManagerReport, PassManager
from slimcc.passes.pipeline import format_pipeline, parse_pipeline

__all__ = ["load", "save", "Pipeline", "register_pass", "compile", "compress"]


def load(model, input_shapes: dict[str, list[int]] | None = None) -> Model:
    """Load a path or onnx.ModelProto into slimcc's IR (see slimcc.ir.model.load_model)."""
    if isinstance(model, Model):
        return model
    return load_model(model, input_shapes)


def save(model: Model, path: str | Path) -> Path:
    """Write a model atomically after onnx.checker."""
    return save_model(model, path)


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
        return calib.CalibrationData.from_reader(calibration)
    return calib.CalibrationData.from_arrays(calibration)


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

    def run(self, model, *, calibration: Any = None, input_shapes=None) -> ManagerReport:
        """Run the passes over `model` (a Model is edited in place) and return the report."""
        model = load(model, input_shapes)
        ctx = PassContext(calibration=as_calibration(calibration, model))
        report = PassManager(self.passes, verify_each=self.verify_each, fixpoint=self.fixpoint).run(model, ctx)
        self.history.append(report)
        return report


def compress(model, *, macs: float | None = None, rank_speedup: float | None = None, int8: bool = False,
             calibration: Any = None, input_shapes=None) -> tuple[Model, str]:
    """The common compression path; returns (compressed model, the pipeline text it ran)."""
    from slimcc.compress_plan import plan_pipeline

    model = load(model, input_shapes)
    text = plan_pipeline(macs=macs, rank_speedup=rank_speedup, int8=int8,
                         has_calibration=calibration is not None)
    Pipeline.from_spec(text).run(model, calibration=calibration)
    return model, text


def compile(model, target: str = "x86", *, output_dir: str | Path, input_shapes=None, tuned=None, **options):
    """Compile a model with TVM into an artifact folder (.so + manifest.json) and return its path."""
    from slimcc.targets.build import compile_model

    return compile_model(load(model, input_shapes), target=target, output_dir=Path(output_dir),
                         tuned=tuned, **options)
