"""SIGKILL at random moments: the output path holds nothing or a complete, valid result.

`slimcc optimize` writes its .onnx atomically and `slimcc compile` its artifact folder
atomically (temp sibling, then rename), so a killed run can never leave a half-written
output under the name the user asked for (temp siblings may remain; they are never the output).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time

import onnx
import pytest

from slimcc.ir.model import load_model
from slimcc.models.zoo import build

OPTIMIZE_KILLS = 5
COMPILE_KILLS = 3


def start(args: list[str]) -> subprocess.Popen:
    """`slimcc ARGS` in its own process group (so the kill reaches any helper it started)."""
    return subprocess.Popen([sys.executable, "-m", "slimcc.cli", "--quiet", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def run_to_end(args: list[str], timeout: float) -> float:
    """Run uninterrupted; return its duration (the scale for random kill moments)."""
    begin = time.monotonic()
    proc = start(args)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-500:]
    return time.monotonic() - begin


def kill_at(args: list[str], delay: float) -> None:
    proc = start(args)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def kill_moments(rng: random.Random, duration: float, count: int) -> list[float]:
    """Random delays over the whole run, weighted towards its end (where the output is written)."""
    return sorted([rng.uniform(0.05, duration)] + [rng.uniform(0.75 * duration, 1.1 * duration)
                                                    for _ in range(count - 1)])


def assert_valid_onnx_or_absent(path) -> bool:
    if not path.exists():
        return False
    onnx.checker.check_model(onnx.load(path))
    load_model(path)
    return True


def test_killed_optimize_leaves_nothing_or_a_valid_model(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(build("resnet-bottleneck", seed=0, size=64, width=32), source)
    out = tmp_path / "out.onnx"
    args = ["optimize", str(source), "-p", "canonicalize", "-o", str(out)]
    duration = run_to_end(args, timeout=300)
    assert assert_valid_onnx_or_absent(out)
    rng = random.Random(9)
    outcomes = []
    for delay in kill_moments(rng, duration, OPTIMIZE_KILLS):
        out.unlink(missing_ok=True)
        kill_at(args, delay)
        outcomes.append(assert_valid_onnx_or_absent(out))
    print(f"optimize ({duration:.1f} s) killed {len(outcomes)} times: {sum(outcomes)} complete, "
          f"{len(outcomes) - sum(outcomes)} absent")


def test_killed_optimize_keeps_the_previous_output(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(build("conv-gemm", seed=0), source)
    out = tmp_path / "out.onnx"
    args = ["optimize", str(source), "-p", "canonicalize", "-o", str(out)]
    duration = run_to_end(args, timeout=300)
    for delay in kill_moments(random.Random(3), duration, 2):
        kill_at(args, delay)
        assert assert_valid_onnx_or_absent(out)  # the old file or the new one, never missing or a mix


def assert_valid_artifact_or_absent(folder) -> bool:
    if not folder.exists():
        return False
    from slimcc.targets.artifact import MANIFEST, read_manifest

    manifest = read_manifest(folder)
    json.loads((folder / MANIFEST).read_text())
    library = (folder / manifest.library).read_bytes()
    assert library[:4] == b"\x7fELF" and len(library) > 1000
    return True


@pytest.mark.slow  # each TVM build takes ~10-35 s on 2 cores
@pytest.mark.skipif(importlib.util.find_spec("slimcc.commands.compile") is None,
                    reason="`slimcc compile` does not exist in this checkout")
def test_killed_compile_leaves_nothing_or_a_valid_artifact(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(build("conv-gemm", seed=0), source)
    out = tmp_path / "artifact"
    args = ["compile", str(source), "--target", "x86", "--untuned", "-o", str(out)]
    duration = run_to_end(args, timeout=600)
    assert assert_valid_artifact_or_absent(out)
    rng = random.Random(5)
    outcomes = []
    for delay in kill_moments(rng, duration, COMPILE_KILLS):
        if out.exists():
            import shutil

            shutil.rmtree(out)
        kill_at(args, delay)
        outcomes.append(assert_valid_artifact_or_absent(out))
    print(f"compile ({duration:.1f} s) killed {len(outcomes)} times: {sum(outcomes)} complete")
