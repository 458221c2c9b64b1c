"""Fixtures for CLI tests: model files on disk and an in-process runner."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from slimcc.cli import main
from slimcc.models.zoo import build


@pytest.fixture(scope="session")
def zoo_file(tmp_path_factory) -> Path:
    """A small zoo model (ResNet basic blocks with unfolded BN) saved to disk."""
    path = tmp_path_factory.mktemp("zoo") / "resnet.onnx"
    onnx.save(build("resnet-basic", seed=0), path)
    return path


@pytest.fixture
def cli(capsys):
    """Run `slimcc ARGS` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
