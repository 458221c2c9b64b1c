"""The sandbox child process: results, errors, crashes and hangs come back as one-line SlimccErrors."""

from __future__ import annotations

import os
import textwrap
import time

import numpy as np
import onnx
import pytest

from slimcc.errors import ModelLoadError, SlimccError
from slimcc.ir.model import load_model
from slimcc.ir.sandbox import SandboxWorker, isolated_check_and_infer, isolated_onnxruntime
from slimcc.ir.verify import random_feeds, run_onnxruntime
from slimcc.models.zoo import build

TASKS = textwrap.dedent('''
    import os, signal, time
    from slimcc.errors import PassError
    from slimcc.ir.sandbox import sandbox_task

    @sandbox_task
    def echo(payload):
        return payload[::-1]

    @sandbox_task
    def segfault(payload):
        os.kill(os.getpid(), signal.SIGSEGV)

    @sandbox_task
    def abort(payload):
        os.abort()

    @sandbox_task
    def hang(payload):
        time.sleep(3600)

    @sandbox_task
    def refuse(payload):
        raise PassError("refused for a reason")

    @sandbox_task
    def bug(payload):
        raise ValueError("missing\\nsecond line")

    @sandbox_task
    def allocate(payload):
        return bytes(8 * 2**30)

    def unmarked(payload):
        return payload
''')


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    (folder / "sandbox_test_tasks.py").write_text(TASKS)
    path = os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])
    sandbox = SandboxWorker(extra_env={"PYTHONPATH": path}, memory_limit_bytes=4 * 2**30)
    yield sandbox
    sandbox.close()


def test_result_comes_back(worker):
    assert worker.call("sandbox_test_tasks:echo", b"abc" * 1000 + b"\n{", what="echoing") == b"{\n" + b"cba" * 1000


@pytest.mark.parametrize("task, signal_number", [("segfault", 11), ("abort", 6)])
def test_crash_is_one_line_error_and_worker_recovers(worker, task, signal_number):
    with pytest.raises(SlimccError) as info:
        worker.call(f"sandbox_test_tasks:{task}", b"", what="creating a session", engine="onnxruntime")
    message = str(info.value)
    assert message.startswith(f"onnxruntime crashed (signal {signal_number}") and "while creating a session" in message
    assert "\n" not in message
    starts = worker.starts
    assert worker.call("sandbox_test_tasks:echo", b"ok", what="echoing") == b"ko"
    assert worker.starts == starts + 1


def test_hang_is_stopped_at_the_timeout(worker):
    start = time.monotonic()
    with pytest.raises(SlimccError, match=r"did not finish within 1\.5 s while building"):
        worker.call("sandbox_test_tasks:hang", b"", what="building", engine="tvm", timeout=1.5)
    assert time.monotonic() - start < 10
    assert worker.call("sandbox_test_tasks:echo", b"x", what="echoing") == b"x"


def test_errors_keep_type_and_stay_one_line(worker):
    from slimcc.errors import PassError

    with pytest.raises(PassError, match="^refused for a reason$"):
        worker.call("sandbox_test_tasks:refuse", b"", what="x")
    with pytest.raises(SlimccError) as info:
        worker.call("sandbox_test_tasks:bug", b"", what="running the thing", engine="onnx")
    assert str(info.value) == "onnx failed while running the thing: ValueError: missing"


def test_memory_limit_turns_into_error(worker):
    with pytest.raises(SlimccError, match="out of memory"):
        worker.call("sandbox_test_tasks:allocate", b"", what="allocating")


def test_only_marked_functions_run(worker):
    with pytest.raises(SlimccError, match="not registered"):
        worker.call("sandbox_test_tasks:unmarked", b"", what="x")
    with pytest.raises(SlimccError, match="not registered"):
        worker.call("os:system", b"echo pwned", what="x")
    with pytest.raises(TypeError):
        worker.call(print, b"", what="x")


def test_isolated_steps_match_in_process():
    proto = build("resnet-basic", seed=3)
    declared = len(proto.graph.value_info)
    weights = [t.SerializeToString() for t in proto.graph.initializer]
    inferred = isolated_check_and_infer(proto)  # updates proto in place; only its graph crossed the pipe
    assert len(inferred.graph.value_info) > declared
    assert [t.SerializeToString() for t in inferred.graph.initializer] == weights
    isolated = isolated_onnxruntime(proto)
    local = run_onnxruntime(proto, random_feeds(proto, seed=0))
    assert len(isolated) == len(local) == 1
    np.testing.assert_array_equal(isolated[0], list(local.values())[0])


def test_load_model_from_file_is_isolated_and_equal(tmp_path):
    proto = build("mobilenetv2", seed=1)
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    isolated, local = load_model(path), load_model(path, isolate=False)
    assert [n.op for n in isolated.graph.nodes] == [n.op for n in local.graph.nodes]
    assert {k: v.shape for k, v in isolated.graph.tensors().items()} == \
        {k: v.shape for k, v in local.graph.tensors().items()}


def test_invalid_model_error_type_survives_isolation():
    broken = build("conv-gemm")
    broken.graph.node[0].input[0] = "ghost"
    with pytest.raises(ModelLoadError, match="invalid ONNX model"):
        load_model(broken, isolate=True)
