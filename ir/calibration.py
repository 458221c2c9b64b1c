"""Calibration data (batches of model inputs) and collection of intermediate activations.

Calibration data is what data-aware passes (int8 ranges, pruning saliency, recovery) see.
It comes from an .npz keyed by input name, in-memory arrays, an onnxruntime-style
CalibrationDataReader, or a folder of images with a stated preprocessing.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import onnx

from slimcc.errors import SlimccError
from slimcc.ir.model import Model, first_line, numpy_dtype, run_shape_inference

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class ImagePreprocessing:
    """How images become a model input: resize to the model's HxW (bilinear), RGB (or grey
    for 1-channel inputs), multiply by `scale`, subtract `mean`, divide by `std` per channel,
    HWC -> NCHW. Defaults are the ImageNet statistics on [0, 1] pixels."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale: float = 1.0 / 255.0

    def describe(self) -> str:
        return f"resize to model HxW (bilinear), RGB, x{self.scale:.6g}, mean {list(self.mean)}, std {list(self.std)}, NCHW"


@dataclass
class CalibrationData:
    """Batches of model inputs: each batch maps every input name to one array."""

    batches: list[dict[str, np.ndarray]] = field(default_factory=list)
    source: str = "arrays"

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.batches)

    @property
    def input_names(self) -> list[str]:
        return sorted(self.batches[0]) if self.batches else []

    @property
    def samples(self) -> int:
        """How many samples the batches hold: the leading dimension of each batch's first input, summed."""
        firsts = [b[min(b)] for b in self.batches if b]
        return sum(int(np.shape(x)[0]) if np.ndim(x) else 1 for x in firsts)

    @classmethod
    def from_arrays(cls, data: dict[str, Any] | list[dict[str, Any]], model: Model | None = None,
                    *, source: str = "arrays") -> CalibrationData:
        """From {input: array} or a list of such batches.

        With a `model`, a single dict whose arrays carry a leading sample axis is split into
        batches of the model's batch size, and every batch is checked against the model's
        inputs (names, static dims, dtype kind) and cast to the input dtypes.
        """
        if isinstance(data, dict):
            arrays = _as_arrays(data, source)
            batches = _split_samples(arrays, model, source) if model is not None else [arrays]
        elif isinstance(data, (list, tuple)):
            batches = [_as_arrays(_as_dict(b, source), source) for b in data]
        else:
            raise SlimccError(f"calibration data from {source} must be a dict or a list of dicts, "
                              f"not {type(data).__name__}")
        if not batches:
            raise SlimccError(f"calibration data from {source} is empty")
        if model is not None:
            batches = [_conform_batch(b, model, source) for b in batches]
        return cls(batches, source)

    @classmethod
    def from_npz(cls, path: str | Path, model: Model | None = None) -> CalibrationData:
        """From an .npz keyed by input name (no pickles). With a `model`, a leading sample axis is
        split into batches of the model's batch size (see from_arrays); without one, one batch."""
        path = Path(path)
        if not path.is_file():
            raise SlimccError(f"calibration file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise SlimccError(f"{path} is not a readable .npz of plain arrays: {first_line(exc)}") from None
        if not arrays:
            raise SlimccError(f"{path} holds no arrays; save one array per model input, e.g. np.savez(path, x=data)")
        return cls.from_arrays(arrays, model, source=str(path))

    @classmethod
    def from_reader(cls, reader, model: Model | None = None, *, max_batches: int | None = None) -> CalibrationData:
        """From an onnxruntime-style CalibrationDataReader: `get_next()` returns dicts until None."""
        if not callable(getattr(reader, "get_next", None)):
            raise SlimccError("a calibration reader needs a get_next() method returning {input: array} or None")
        batches = []
        while max_batches is None or len(batches) < max_batches:
            item = reader.get_next()
            if item is None:
                break
            batches.append({str(k): np.array(v) for k, v in _as_dict(item, "reader").items()})
        if not batches:
            raise SlimccError("the calibration reader returned no batches")
        return cls.from_arrays(batches, model, source=type(reader).__name__)

    @classmethod
    def from_folder(cls, path: str | Path, model: Model,
                    preprocessing: ImagePreprocessing | None = None) -> CalibrationData:
        """From a folder of images for a single-input NCHW model (see ImagePreprocessing).

        Images are sorted by file name and grouped into batches of the model's batch size
        (1 if dynamic); a last incomplete batch is dropped.
        """
        path = Path(path)
        if not path.is_dir():
            raise SlimccError(f"calibration folder not found: {path}")
        if len(model.graph.inputs) != 1:
            raise SlimccError("image-folder calibration needs a model with exactly one input; use an .npz instead")
        tensor = model.graph.inputs[0]
        shape = tensor.shape
        if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise SlimccError(f"image-folder calibration needs a static NCHW input; {tensor.name} is {shape} "
                              f"(fix it with --input-shape {tensor.name}=1,3,H,W)")
        channels, height, width = shape[1], shape[2], shape[3]
        if channels not in (1, 3):
            raise SlimccError(f"input {tensor.name} has {channels} channels; images give 1 or 3")
        prep = preprocessing or (ImagePreprocessing() if channels == 3 else
                                 ImagePreprocessing(mean=(float(np.mean(IMAGENET_MEAN)),),
                                                    std=(float(np.mean(IMAGENET_STD)),)))
        if len(prep.mean) != channels or len(prep.std) != channels or any(s == 0 for s in prep.std):
            raise SlimccError(f"preprocessing mean/std need {channels} values each (std non-zero)")
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 1
        if len(files) < batch:
            raise SlimccError(f"{path} has {len(files)} image(s) ({', '.join(IMAGE_SUFFIXES)}); "
                              f"need at least {batch}")
        images = [_load_image(f, height, width, channels, prep) for f in files[: len(files) - len(files) % batch]]
        dtype = numpy_dtype(tensor.dtype) or np.float32
        batches = [{tensor.name: np.stack(images[i:i + batch]).astype(dtype)} for i in range(0, len(images), batch)]
        return cls(batches, f"{path} ({prep.describe()})")


def load_calibration(spec: str | Path, model: Model) -> CalibrationData:
    """`--calib` dispatch: an .npz file keyed by input name, or a folder of images."""
    path = Path(spec)
    if path.is_dir():
        return CalibrationData.from_folder(path, model)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise SlimccError(f"--calib {spec}: give an .npz keyed by input name or a folder of images")
        return CalibrationData.from_npz(path, model)
    raise SlimccError(f"--calib {spec}: no such file or folder")


def collect_activations(model: Model, calib: CalibrationData | Iterable[dict[str, np.ndarray]],
                        tensor_names: list[str], *, progress: bool = True) -> dict[str, list[np.ndarray]]:
    """Run the model on every calibration batch and return {tensor name: [array per batch]}.

    Holds every requested tensor of every batch at once; `iter_activations` yields one batch at a time.
    """
    result: dict[str, list[np.ndarray]] = {n: [] for n in dict.fromkeys(tensor_names)}
    for values in iter_activations(model, calib, tensor_names, progress=progress):
        for name, value in values.items():
            result[name].append(value)
    return result


def iter_activations(model: Model, calib: CalibrationData | Iterable[dict[str, np.ndarray]],
                     tensor_names: list[str], *, progress: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """Run the model on each calibration batch in turn and yield {tensor name: array} for that batch.

    The requested intermediate tensors are added as extra graph outputs (types from shape
    inference, any dtype) and the model runs on onnxruntime with graph optimizations off (one
    session for all batches). Graph inputs may be requested too; they are returned from the feeds.
    """
    from tqdm import tqdm

    from slimcc.ir.verify import make_session

    batches = list(calib.batches if isinstance(calib, CalibrationData) else calib)
    if not batches:
        raise SlimccError("no calibration batches to run")
    names = list(dict.fromkeys(tensor_names))
    proto, external = model.weightless_proto()
    proto = run_shape_inference(proto, trusted=True)
    graph = proto.graph
    infos: dict[str, onnx.ValueInfoProto] = {}
    for info in list(graph.value_info) + list(graph.output) + list(graph.input):
        infos[info.name] = info
    input_names = {i.name for i in graph.input}
    initializer_names = {i.name for i in graph.initializer}
    output_names = [o.name for o in graph.output]
    for name in names:
        if name in input_names or name in output_names:
            continue
        if name in initializer_names:
            raise SlimccError(f"tensor {name!r} is a constant, not an activation")
        if name not in infos or not infos[name].type.tensor_type.elem_type:
            produced = {o for n in graph.node for o in n.output}
            if name not in produced:
                raise SlimccError(f"tensor {name!r} is not in the model")
            raise SlimccError(f"tensor {name!r} has no inferred type; run canonicalize or give --input-shape")
        graph.output.add().CopyFrom(infos[name])
    session = make_session(proto, external=external)
    fetch = [n for n in names if n not in input_names]
    for batch in tqdm(batches, desc="activations", unit="batch", disable=not progress, leave=False):
        missing = input_names - set(batch)
        if missing:
            raise SlimccError(f"calibration batch lacks input(s) {', '.join(sorted(missing))}")
        feeds = {k: v for k, v in batch.items() if k in input_names}
        try:
            values = session.run(fetch, feeds) if fetch else []
        except Exception as exc:
            raise SlimccError(f"onnxruntime failed on a calibration batch: {first_line(exc)}") from None
        got = dict(zip(fetch, values))
        del values  # the consumer's copy is the only one left while the next batch runs
        yield {name: np.asarray(feeds[name] if name in input_names else got.pop(name)) for name in names}


def _as_arrays(batch: dict, source: str) -> dict[str, np.ndarray]:
    """{name: value} as {name: array}; ragged values (e.g. a sequence of tensors) are refused in one line."""
    arrays = {}
    for key, value in batch.items():
        try:
            arrays[str(key)] = np.asarray(value)
        except ValueError as exc:
            raise SlimccError(f"calibration input {key!r} from {source} is not a tensor: {first_line(exc)} "
                              "(sequence inputs are not supported)") from None
    return arrays


def _as_dict(item, source: str) -> dict:
    if not isinstance(item, dict):
        raise SlimccError(f"calibration batch from {source} must be a dict of input name -> array, "
                          f"not {type(item).__name__}")
    return item




def _model_inputs(model: Model) -> dict[str, tuple[list | None, np.dtype | None]]:
    return {t.name: (t.shape, numpy_dtype(t.dtype)) for t in model.graph.inputs}


def _split_samples(arrays: dict[str, np.ndarray], model: Model, source: str) -> list[dict[str, np.ndarray]]:
    """Split arrays with a leading sample axis into batches of the model's batch size."""
    inputs = _model_inputs(model)
    _check_names(arrays, inputs, source)
    counts = {}
    chunked: dict[str, list[np.ndarray]] = {}
    for name, array in arrays.items():
        shape, _ = inputs[name]
        if shape is None:
            chunked[name] = [array]
        elif array.ndim == len(shape) + 1:
            chunked[name] = [array[i] for i in range(array.shape[0])]
        elif array.ndim == len(shape):
            batch = shape[0] if len(shape) and isinstance(shape[0], int) and shape[0] > 0 else 1
            if len(shape) == 0:
                chunked[name] = [array]
            elif array.shape[0] % batch:
                raise SlimccError(f"{source}: {name} has {array.shape[0]} samples, not a multiple of the "
                                  f"model's batch size {batch}")
            else:
                chunked[name] = [array[i:i + batch] for i in range(0, array.shape[0], batch)]
        else:
            raise SlimccError(f"{source}: {name} has shape {list(array.shape)}; the model input is {shape} "
                              "(give samples stacked on a leading axis)")
        counts[name] = len(chunked[name])
    if len(set(counts.values())) > 1:
        raise SlimccError(f"{source}: inputs give different numbers of batches: {counts}")
    total = next(iter(counts.values()))
    if total == 0:
        raise SlimccError(f"{source}: no samples")
    return [{name: chunks[i] for name, chunks in chunked.items()} for i in range(total)]


def _check_names(batch: dict[str, np.ndarray], inputs: dict, source: str) -> None:
    unknown = sorted(set(batch) - set(inputs))
    missing = sorted(set(inputs) - set(batch))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown key(s) {', '.join(unknown)}")
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        raise SlimccError(f"{source}: {'; '.join(parts)}; the model's inputs are {', '.join(sorted(inputs))}")


def _conform_batch(batch: dict[str, np.ndarray], model: Model, source: str) -> dict[str, np.ndarray]:
    """Check one batch against the model's inputs and cast to their dtypes."""
    inputs = _model_inputs(model)
    _check_names(batch, inputs, source)
    out = {}
    for name, array in batch.items():
        shape, dtype = inputs[name]
        if shape is not None:
            ok = array.ndim == len(shape) and all(
                not (isinstance(d, int) and d > 0) or d == a for d, a in zip(shape, array.shape))
            if not ok:
                raise SlimccError(f"{source}: {name} batch has shape {list(array.shape)}; the model expects {shape}")
        if dtype is not None and array.dtype != dtype:
            same_kind = np.can_cast(array.dtype, dtype, casting="same_kind")
            int_to_float = np.issubdtype(array.dtype, np.integer) and np.issubdtype(dtype, np.floating)
            if not (same_kind or int_to_float):
                raise SlimccError(f"{source}: {name} is {array.dtype}; the model expects {dtype}")
            array = array.astype(dtype)
        out[name] = np.ascontiguousarray(array)
    return out


def _load_image(path: Path, height: int, width: int, channels: int, prep: ImagePreprocessing) -> np.ndarray:
    """Read, resize and normalize one image into CHW float32."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SlimccError(f"cannot read image {path}: {first_line(exc)}") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    pixels = pixels * prep.scale
    pixels = (pixels - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.transpose(pixels, (2, 0, 1))
