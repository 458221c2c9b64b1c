"""Fixtures for the product tests: zoo model files, calibration files and an in-process CLI runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from slimcc.cli import main
from slimcc.models.zoo import build


@pytest.fixture(scope="session")
def resnet_file(tmp_path_factory) -> Path:
    """The zoo ResNet (basic blocks, unfolded BN) on disk."""
    path = tmp_path_factory.mktemp("zoo") / "resnet.onnx"
    onnx.save(build("resnet-basic", seed=0), path)
    return path


@pytest.fixture(scope="session")
def resnet_calib(tmp_path_factory) -> Path:
    """16 calibration samples for the zoo ResNet (input x 1x3x32x32), samples on a leading axis."""
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    return path


@pytest.fixture
def cli(capsys):
    """Run `slimcc ARGS` in-process; returns (exit code, stdout, stderr)."""

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
