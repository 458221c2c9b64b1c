"""Run steps that can crash the whole process in a child process, with a time limit.

onnxruntime session creation, ONNX shape inference and TVM builds are C++ code that
can segfault, abort or loop on hostile models. A `SandboxWorker` is a long-lived child
Python process (started with subprocess, so nothing is forked from a threaded parent)
that runs registered task functions on bytes and answers with bytes. When the child dies
or overruns its time limit, the caller gets a one-line SlimccError such as
"onnxruntime crashed (signal 11) while creating a session", and the next call starts a
fresh child.

The wire format is a JSON header line plus raw bytes; nothing is pickled. The child only
runs functions marked with `@sandbox_task` in modules whose name the parent gives.
"""

from __future__ import annotations

import atexit
import importlib
import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

from slimcc.errors import SlimccError

DEFAULT_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0
_MAX_HEADER = 1 << 16


def sandbox_task(function: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """Mark a module-level function `bytes -> bytes` as runnable inside the sandbox."""
    function._slimcc_sandbox_task = True
    return function


def describe_death(returncode: int, engine: str, what: str) -> str:
    """One line for a child that died: signal name/number or exit status."""
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        return f"{engine} crashed (signal {number}, {name}) while {what}"
    return f"{engine} exited with status {returncode} while {what}"


class SandboxWorker:
    """A child Python process that runs `@sandbox_task` functions; restarted after a crash.

    Thread-safe (calls are serialized). `extra_env` is added to the child's environment;
    `memory_limit_bytes` caps the child's address space (a MemoryError there is reported as
    "out of memory" instead of the machine swapping).
    """

    def __init__(self, *, extra_env: dict[str, str] | None = None, memory_limit_bytes: int | None = None):
        self._extra_env = dict(extra_env or {})
        if memory_limit_bytes:
            self._extra_env["SLIMCC_SANDBOX_MEMORY_BYTES"] = str(int(memory_limit_bytes))
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.starts = 0

    def _start(self) -> None:
        env = dict(os.environ)
        env.update(self._extra_env)
        env.setdefault("OMP_NUM_THREADS", "1")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "slimcc.ir.sandbox"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        self.starts += 1
        header, _ = self._receive(time.monotonic() + START_TIMEOUT_S, "starting the sandbox", "slimcc sandbox")
        if header.get("ready") is not True:
            self._kill()
            raise SlimccError("the slimcc sandbox process did not start (broken installation?)")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        proc.wait()

    def close(self) -> None:
        """Stop the child process (it is also stopped at interpreter exit)."""
        with self._lock:
            self._kill()

    def call(self, task: Callable[[bytes], bytes] | str, payload: bytes, *, what: str, engine: str = "onnx",
             timeout: float = DEFAULT_TIMEOUT_S) -> bytes:
        """Run `task(payload)` in the child and return its bytes.

        Raises SlimccError: with the task's own message when it raised one, or
        "<engine> crashed (signal N) while <what>" / "... timed out" when the child died or hung.
        """
        name = _task_name(task)
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._kill()
                self._start()
            deadline = time.monotonic() + timeout
            try:
                header = json.dumps({"task": name, "size": len(payload)}).encode() + b"\n"
                self._proc.stdin.write(header)
                self._proc.stdin.write(payload)
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # the child died; _receive reports how
            reply, body = self._receive(deadline, what, engine, timeout=timeout)
        if reply.get("ok"):
            return body
        message = reply.get("error") or "unknown error"
        if reply.get("slimcc"):
            raise _error_class(reply.get("kind", ""))(message)
        raise SlimccError(f"{engine} failed while {what}: {message}")

    def _receive(self, deadline: float, what: str, engine: str, *, timeout: float = START_TIMEOUT_S):
        """Read one reply (header line + body) before `deadline`, or raise a one-line SlimccError."""
        proc = self._proc
        buffer = bytearray()
        fd = proc.stdout.fileno()
        header = None
        needed = None
        while True:
            if header is not None and len(buffer) >= needed:
                return header, bytes(buffer[:needed])
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise SlimccError(f"{engine} did not finish within {timeout:g} s while {what}; stopped it")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                code = proc.wait()
                self._kill()
                raise SlimccError(describe_death(code, engine, what))
            buffer += chunk
            if header is None:
                newline = buffer.find(b"\n")
                if newline < 0:
                    if len(buffer) > _MAX_HEADER:
                        self._kill()
                        raise SlimccError(f"the slimcc sandbox sent garbage while {what}")
                    continue
                try:
                    header = json.loads(bytes(buffer[:newline]))
                except ValueError:
                    self._kill()
                    raise SlimccError(f"the slimcc sandbox sent garbage while {what}") from None
                del buffer[:newline + 1]
                needed = int(header.get("size", 0))


def _error_class(name: str) -> type[SlimccError]:
    """The slimcc error class called `name` (errors keep their type across the process boundary)."""
    from slimcc import errors

    cls = getattr(errors, name, SlimccError)
    return cls if isinstance(cls, type) and issubclass(cls, SlimccError) else SlimccError


def _task_name(task: Callable | str) -> str:
    if isinstance(task, str):
        return task
    if not getattr(task, "_slimcc_sandbox_task", False):
        raise TypeError(f"{task!r} is not marked with @sandbox_task")
    return f"{task.__module__}:{task.__qualname__}"


_shared: SandboxWorker | None = None
_shared_lock = threading.Lock()


def shared_worker() -> SandboxWorker:
    """The process-wide worker (started on first use, stopped at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SandboxWorker()
            atexit.register(_shared.close)
        return _shared


def run_isolated(task: Callable[[bytes], bytes] | str, payload: bytes, *, what: str, engine: str = "onnx",
                 timeout: float = DEFAULT_TIMEOUT_S) -> bytes:
    """`task(payload)` in the shared sandbox child (see SandboxWorker.call)."""
    return shared_worker().call(task, payload, what=what, engine=engine, timeout=timeout)


# ---------------------------------------------------------------- built-in tasks

@sandbox_task
def check_and_infer_task(payload: bytes) -> bytes:
    """onnx.checker then shape inference on a serialized weightless model (ModelLoadError when invalid)."""
    import onnx

    from slimcc.ir.model import check_and_infer_stripped

    proto = onnx.ModelProto()
    proto.ParseFromString(payload)
    return check_and_infer_stripped(proto).SerializeToString()


@sandbox_task
def infer_shapes_task(payload: bytes) -> bytes:
    """ONNX shape inference (with data propagation) on a serialized weightless model; returns the result."""
    import onnx

    from slimcc.ir.model import infer_stripped

    proto = onnx.ModelProto()
    proto.ParseFromString(payload)
    return infer_stripped(proto).SerializeToString()


@sandbox_task
def onnxruntime_run_task(payload: bytes) -> bytes:
    """Create an onnxruntime session for a serialized model and run it on random inputs.

    Returns the outputs as an .npz archive (loaded without pickle by `isolated_onnxruntime`).
    """
    import numpy as np
    import onnx

    from slimcc.ir.verify import random_feeds, run_onnxruntime

    proto = onnx.ModelProto()
    proto.ParseFromString(payload)
    feeds = random_feeds(proto, seed=0)
    outputs = run_onnxruntime(proto, feeds)
    buffer = io.BytesIO()
    np.savez(buffer, **{f"out{i}": np.asarray(v) for i, v in enumerate(outputs.values())})
    return buffer.getvalue()


def isolated_check_and_infer(proto, *, timeout: float = DEFAULT_TIMEOUT_S):
    """onnx.checker + shape inference of a ModelProto in the sandbox; returns `proto`, updated in place.

    Only a weightless copy (`ir.weightless.strip_weights`) crosses the pipe: the weights stay here.
    """
    return _isolated_weightless(check_and_infer_task, proto, "checking the model and inferring shapes", "onnx",
                                timeout, False)


def isolated_infer_shapes(proto, *, timeout: float = DEFAULT_TIMEOUT_S, trusted: bool = False):
    """ONNX shape inference of a ModelProto in the sandbox; returns `proto`, updated in place
    (`trusted` as in `ir.weightless.stubbable`)."""
    return _isolated_weightless(infer_shapes_task, proto, "inferring shapes", "onnx shape inference", timeout,
                                trusted)


def _isolated_weightless(task, proto, what: str, engine: str, timeout: float, trusted: bool):
    import onnx

    from slimcc.ir.weightless import restore_weights, strip_weights

    payload = strip_weights(proto, trusted=trusted).SerializeToString()
    result = run_isolated(task, payload, what=what, engine=engine, timeout=timeout)
    inferred = onnx.ModelProto()
    inferred.ParseFromString(result)
    return restore_weights(inferred, proto)


def isolated_onnxruntime(proto, *, timeout: float = DEFAULT_TIMEOUT_S) -> list:
    """Run a ModelProto on onnxruntime (random inputs) in the sandbox; returns its output arrays."""
    import numpy as np

    result = run_isolated(onnxruntime_run_task, proto.SerializeToString(),
                          what="creating a session and running the model", engine="onnxruntime",
                          timeout=timeout)
    with np.load(io.BytesIO(result), allow_pickle=False) as archive:
        return [archive[f"out{i}"] for i in range(len(archive.files))]


# ---------------------------------------------------------------- child side

def _serve() -> None:
    """Child main loop: read requests from stdin, answer on the original stdout."""
    limit = os.environ.get("SLIMCC_SANDBOX_MEMORY_BYTES")
    if limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # library chatter on stdout must not corrupt the protocol
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    channel.write(json.dumps({"ready": True, "size": 0}).encode() + b"\n")
    channel.flush()
    while True:
        line = requests.readline()
        if not line:
            return
        request = json.loads(line)
        payload = requests.read(int(request["size"]))
        channel.write(_answer(request["task"], payload))
        channel.flush()


def _answer(name: str, payload: bytes) -> bytes:
    from slimcc.ir.model import first_line

    try:
        module_name, _, attr = name.partition(":")
        function = getattr(importlib.import_module(module_name), attr, None)
        if not getattr(function, "_slimcc_sandbox_task", False):
            raise SlimccError(f"sandbox task {name!r} is not registered")
        body = function(payload)
        header = {"ok": True, "size": len(body)}
    except SlimccError as exc:
        body, header = b"", {"ok": False, "slimcc": True, "kind": type(exc).__name__, "error": str(exc),
                             "size": 0}
    except MemoryError:
        body, header = b"", {"ok": False, "error": "out of memory", "size": 0}
    except Exception as exc:  # reported to the parent as one line
        body, header = b"", {"ok": False, "error": f"{type(exc).__name__}: {first_line(exc)}", "size": 0}
    return json.dumps(header).encode() + b"\n" + body


if __name__ == "__main__":
    _serve()
