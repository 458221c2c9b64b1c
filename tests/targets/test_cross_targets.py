"""aarch64 cross-compilation (ELF check) and CUDA builds; CUDA runs only where a GPU is present."""

from __future__ import annotations

import re
import shutil

import pytest

from slimcc.errors import SlimccError
from slimcc.models.fetch import REAL_MODELS
from slimcc.models.zoo import ZOO
from slimcc.targets.compiler import compile_model, prepare_model
from slimcc.targets.runner import load_artifact
from slimcc.targets.target import cuda_device_available, make_target, nvcc_path

from targets_helpers import assert_matches_onnxruntime, feeds_for

ELF_MACHINE_AARCH64 = 183
NO_GPU = "no CUDA GPU on this machine (TVM sees no cuda device 0): the CUDA artifact was built but cannot run here"


def elf_machine(path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[18:20], "little")


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="aarch64-linux-gnu-g++ missing (apt-get install g++-aarch64-linux-gnu)")
@pytest.mark.parametrize("name", ["resnet-basic"])
def test_arm_export_is_an_aarch64_shared_object(name, zoo_model, tmp_path):
    manifest = compile_model(zoo_model(name), make_target("arm"), tmp_path / "arm", isolate=False)
    assert manifest.target["tvm"]["mtriple"] == "aarch64-linux-gnu"
    assert elf_machine(tmp_path / "arm" / manifest.library) == ELF_MACHINE_AARCH64
    with pytest.raises(SlimccError, match="--rpc"):
        load_artifact(tmp_path / "arm")


def _build_and_maybe_run_cuda(model, tmp_path):
    manifest = compile_model(model, make_target("cuda"), tmp_path / "cuda", isolate=False)
    library = tmp_path / "cuda" / manifest.library
    assert manifest.target["tvm"]["kind"] == "cuda"
    data = library.read_bytes()
    assert b"__tvm_ffi__library_bin" in data  # the device module is embedded in the host library
    assert re.search(rb"fused_conv2d\w*_kernel", data), "no CUDA conv kernel in the library"
    if not cuda_device_available():
        pytest.skip(NO_GPU)
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "cuda").run(feeds), feeds)


needs_nvcc = pytest.mark.skipif(nvcc_path() is None, reason="nvcc (CUDA toolkit) is not installed")


@needs_nvcc
def test_cuda_build_zoo_resnet(zoo_model, tmp_path):
    _build_and_maybe_run_cuda(zoo_model("resnet-basic"), tmp_path)


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ZOO if n != "resnet-basic"])
def test_cuda_build_zoo(name, zoo_model, tmp_path):
    _build_and_maybe_run_cuda(zoo_model(name), tmp_path)


@needs_nvcc
@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_cuda_build_real_model(name, real_model_path, tmp_path):
    info = REAL_MODELS[name]
    _build_and_maybe_run_cuda(prepare_model(real_model_path(name), {info.input_name: list(info.input_shape)}),
                              tmp_path)
