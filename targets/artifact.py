"""Compiled artifacts: a folder with the exported library and a JSON manifest.

manifest.json records what a runner needs without TVM (input/output names, shapes and
dtypes in call order), what was built (target, TVM and slimcc versions, tuning database)
and where it came from (sha256 of the source model). Folders are written atomically:
everything goes into a temporary sibling folder that is renamed into place at the end.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from slimcc import __version__
from slimcc.errors import SlimccError
from slimcc.ir.atomic import atomic_folder
from slimcc.ir.model import Model

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ONNX_TO_NUMPY = {"float32": "float32", "float64": "float64", "float16": "float16", "int64": "int64",
                 "int32": "int32", "int8": "int8", "uint8": "uint8", "bool": "bool"}


@dataclass
class TensorSpec:
    """A graph input or output: name, static shape, numpy dtype name."""

    name: str
    shape: list[int]
    dtype: str

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class Manifest:
    """The manifest of an artifact folder."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    target: dict
    source_sha256: str | None
    library: str = "model.so"
    slimcc_version: str = __version__
    build: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def as_dict(self) -> dict:
        return {"format_version": self.format_version, "slimcc_version": self.slimcc_version,
                "library": self.library, "target": self.target, "source_sha256": self.source_sha256,
                "inputs": [t.as_dict() for t in self.inputs], "outputs": [t.as_dict() for t in self.outputs],
                "build": self.build}

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        try:
            return cls(inputs=[TensorSpec(**t) for t in data["inputs"]],
                       outputs=[TensorSpec(**t) for t in data["outputs"]],
                       target=data["target"], source_sha256=data.get("source_sha256"),
                       library=data["library"], slimcc_version=data.get("slimcc_version", "?"),
                       build=data.get("build", {}), format_version=int(data.get("format_version", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise SlimccError(f"malformed artifact manifest ({exc}); recompile with `slimcc compile`") from None


def tensor_specs(tensors) -> list[TensorSpec]:
    """TensorSpecs of onnx-graphsurgeon graph inputs/outputs (shapes must be static)."""
    import numpy as np

    specs = []
    for tensor in tensors:
        if tensor.shape is None or any(not isinstance(d, int) or d < 0 for d in tensor.shape):
            raise SlimccError(f"tensor {tensor.name!r} has no static shape; give --input-shape and canonicalize")
        dtype = np.dtype(tensor.dtype).name if tensor.dtype is not None else "float32"
        specs.append(TensorSpec(tensor.name, [int(d) for d in tensor.shape], ONNX_TO_NUMPY.get(dtype, dtype)))
    return specs


def manifest_for(model: Model, target: dict, build: dict, library: str = "model.so") -> Manifest:
    """The manifest describing `model` compiled for `target`."""
    return Manifest(inputs=tensor_specs(model.graph.inputs), outputs=tensor_specs(model.graph.outputs),
                    target=target, source_sha256=model.source_sha256, library=library,
                    build={**build, "created_unix": int(time.time())})


@contextmanager
def staging_folder(out_dir: Path):
    """A temporary folder beside `out_dir`; on success it replaces `out_dir`, on failure it is removed.

    An existing `out_dir` is replaced only when it is an artifact folder (has a manifest) or empty,
    so a typo cannot wipe an unrelated folder.
    """
    out_dir = Path(out_dir)
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.is_dir():
        raise SlimccError(f"output folder's parent {parent} does not exist")
    if out_dir.exists() and not _replaceable(out_dir):
        raise SlimccError(f"{out_dir} exists and is not a slimcc artifact folder; choose another -o")
    with atomic_folder(out_dir) as staging:
        yield staging


def _replaceable(path: Path) -> bool:
    if not path.is_dir():
        return False
    return (path / MANIFEST).is_file() or not any(path.iterdir())


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write manifest.json into `folder` (a staging folder)."""
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(manifest.as_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(folder: str | Path) -> Manifest:
    """Read and validate an artifact folder's manifest."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise SlimccError(f"artifact folder not found: {folder} (create one with `slimcc compile ... -o {folder}`)")
    if not path.is_file():
        raise SlimccError(f"{folder} has no {MANIFEST}; it is not a slimcc artifact (use `slimcc compile`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SlimccError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SlimccError(f"{path} is not a JSON object")
    manifest = Manifest.from_dict(data)
    if manifest.format_version != FORMAT_VERSION:
        raise SlimccError(f"{path} has format {manifest.format_version}, this slimcc reads {FORMAT_VERSION}; recompile")
    if Path(manifest.library).name != manifest.library or not (folder / manifest.library).is_file():
        raise SlimccError(f"{folder} lacks its library {manifest.library!r}; recompile the artifact")
    return manifest
