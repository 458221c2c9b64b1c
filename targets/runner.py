"""Run compiled artifacts with the Relax VirtualMachine, here or on a remote device over TVM RPC.

Inputs are checked against the manifest before anything reaches TVM, so a wrong name,
shape or dtype is a one-line SlimccError rather than a crash inside the runtime.
"""

from __future__ import annotations

import timeit
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimcc.errors import SlimccError
from slimcc.ir.model import first_line
from slimcc.targets.artifact import Manifest, read_manifest
from slimcc.targets.tvm_import import ensure_tvm


@dataclass
class LoadedArtifact:
    """An artifact loaded into a VirtualMachine on a device (local or remote)."""

    manifest: Manifest
    vm: object
    device: object

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns {output name: array} in manifest order."""
        args = self._arguments(feeds)
        try:
            result = self.vm["main"](*args)
        except Exception as exc:
            raise SlimccError(f"running the artifact failed: {first_line(exc)}") from None
        values = [result] if not _is_sequence(result) else list(result)
        if len(values) != len(self.manifest.outputs):
            raise SlimccError(f"artifact returned {len(values)} outputs, manifest lists {len(self.manifest.outputs)}")
        return {spec.name: value.numpy() for spec, value in zip(self.manifest.outputs, values)}

    def time(self, feeds: dict[str, np.ndarray], *, repeat: int = 20, warmup: int = 3) -> float:
        """Median seconds per run of `main` on device-resident inputs (excludes host<->device copies)."""
        args = self._arguments(feeds)
        for _ in range(warmup):
            self.vm["main"](*args)
        self.device.sync()
        samples = []
        for _ in range(repeat):
            start = timeit.default_timer()
            self.vm["main"](*args)
            self.device.sync()
            samples.append(timeit.default_timer() - start)
        return float(np.median(samples))

    def _arguments(self, feeds: dict[str, np.ndarray]) -> list:
        check_feeds(self.manifest, feeds)
        return [device_tensor(feeds[spec.name], self.device) for spec in self.manifest.inputs]


TVM_ALIGNMENT = 64  # bytes: TVM's kernels assume tensors this aligned (kAllocAlignment)


def device_tensor(value: np.ndarray, device):
    """`value` as a TVM tensor on `device`: the numpy memory itself (DLPack, no copy) where the device
    is this machine's CPU and the array is writeable, C-contiguous and 64-byte aligned, else a copy.

    onnxruntime reads numpy inputs in place too; the copy costs 70 us per call on a 224x224 image.
    `aligned_array` makes an array that qualifies.
    """
    tvm = ensure_tvm()

    if (device.dlpack_device_type() == tvm.cpu(0).dlpack_device_type() and value.flags.c_contiguous and value.size
            and value.flags.writeable and value.ctypes.data % TVM_ALIGNMENT == 0):
        try:
            return tvm.runtime.from_dlpack(value)
        except (BufferError, TypeError, ValueError, RuntimeError):  # a dtype or array DLPack cannot share
            pass
    return tvm.runtime.tensor(np.ascontiguousarray(value), device)


def aligned_array(value: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `value` whose data starts on a 64-byte boundary (see `device_tensor`)."""
    value = np.ascontiguousarray(value)
    raw = np.empty(value.nbytes + TVM_ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % TVM_ALIGNMENT
    out = raw[start:start + value.nbytes].view(value.dtype).reshape(value.shape)
    out[...] = value
    return out


def check_feeds(manifest: Manifest, feeds: dict[str, np.ndarray]) -> None:
    """Every manifest input present with its exact shape and dtype; no unknown names."""
    expected = {spec.name: spec for spec in manifest.inputs}
    unknown = sorted(set(feeds) - set(expected))
    if unknown:
        raise SlimccError(f"unknown input(s) {unknown}; the artifact takes: {', '.join(expected)}")
    for name, spec in expected.items():
        if name not in feeds:
            raise SlimccError(f"missing input {name!r} (shape {spec.shape}, {spec.dtype}); pass --input {name}=FILE.npy")
        value = feeds[name]
        if list(value.shape) != list(spec.shape):
            raise SlimccError(f"input {name!r} has shape {list(value.shape)}, the artifact was compiled for {spec.shape}")
        if value.dtype != np.dtype(spec.dtype):
            raise SlimccError(f"input {name!r} has dtype {value.dtype}, the artifact expects {spec.dtype}")


def load_artifact(folder: str | Path, session=None) -> LoadedArtifact:
    """Load an artifact folder into a VirtualMachine.

    `session` is a TVM RPC session (`slimcc.targets.rpc.connect` / `connect_tracker`); without one the artifact must be
    runnable on this machine (x86, or cuda with a local GPU).
    """
    tvm = ensure_tvm()
    from tvm import relax

    folder = Path(folder)
    manifest = read_manifest(folder)
    kind = manifest.target.get("tvm", {}).get("kind")
    library = folder / manifest.library
    if session is None:
        device = _local_device(manifest)
        try:
            module = tvm.runtime.load_module(str(library))
        except Exception as exc:
            raise SlimccError(f"cannot load {library}: {first_line(exc)} (was it built for this machine?)") from None
    else:
        from slimcc.targets.rpc import upload_and_load

        module = upload_and_load(session, library)
        device = session.cuda(0) if kind == "cuda" else session.cpu(0)
    try:
        vm = relax.VirtualMachine(module, device)
    except Exception as exc:
        raise SlimccError(f"cannot start the Relax VM: {first_line(exc)}") from None
    return LoadedArtifact(manifest, vm, device)


def run_artifact(folder: str | Path, feeds: dict[str, np.ndarray], session=None) -> dict[str, np.ndarray]:
    """Load and run an artifact once: {output name: array}."""
    return load_artifact(folder, session).run(feeds)


def _local_device(manifest: Manifest):
    tvm = ensure_tvm()

    from slimcc.targets.target import cuda_device_available

    name = manifest.target.get("name")
    if name == "cuda":
        if not cuda_device_available():
            raise SlimccError("this artifact is for CUDA but no CUDA GPU is visible here; run it on a GPU machine "
                              "or through --rpc HOST:PORT")
        return tvm.cuda(0)
    if name == "arm":
        raise SlimccError("this artifact is for aarch64; run it on an ARM board or emulator with "
                          "--rpc HOST:PORT (see slimcc.targets.emulate_arm)")
    return tvm.cpu(0)


def _is_sequence(value) -> bool:
    return not hasattr(value, "numpy") and hasattr(value, "__len__")
