"""Run compiled libraries on a remote device through TVM RPC (a board, a tracker, or emulation).

The host uploads an exported .so to the RPC server, loads it there and drives the Relax VM on the
remote CPU; inputs and outputs cross the connection as tensors.  Only the address the user names
is contacted.  Every TVM failure is re-raised as SlimccError naming the address.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slimcc.errors import SlimccError
from slimcc.ir.model import first_line
from slimcc.targets.tvm_import import ensure_tvm

tvm = ensure_tvm()
from tvm import relax, rpc  # noqa: E402  (after ensure_tvm, which keeps torch out of TVM's import)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9090
DEFAULT_TRACKER_PORT = 9190  # TVM's conventional tracker port, for parse_address(text, DEFAULT_TRACKER_PORT)


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Parse 'HOST:PORT', 'HOST' or ':PORT' (host defaults to 127.0.0.1) for --rpc / --tracker."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host, port_text = port_text, str(default_port)
    host = host or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise SlimccError(f"bad RPC address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9090") from None
    if not 0 < port < 65536:
        raise SlimccError(f"bad RPC address {text!r}: port must be 1-65535")
    return host, port


def connect(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout: float = 30.0, key: str = ""):
    """Open an RPC session to the server at host:port, retrying until `timeout` seconds pass.

    Retrying covers a server that is still starting (an emulated one takes tens of seconds).
    """
    address = f"{host}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            session = rpc.connect(host, port, key)
            break
        except Exception as exc:  # TVM raises its own error types from C++
            if time.monotonic() >= deadline:
                raise SlimccError(
                    f"cannot connect to the TVM RPC server at {address} within {timeout:g} s: "
                    f"{first_line(exc)} (start one with `python -m slimcc.targets.emulate_arm serve "
                    f"--port {port}` or on the board with `python -m tvm.exec.rpc_server`)"
                ) from exc
            time.sleep(0.5)
    session.slimcc_address = address
    return session


def open_tracker(host: str, port: int, timeout: float = 10.0):
    """A client of the TVM RPC tracker at host:port; a one-line error when it cannot be reached.

    TVM's tracker client retries a refused connection for 60 s; this fails fast instead.
    """
    address = f"{host}:{port}"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return rpc.connect_tracker(host, port)
    except Exception as exc:  # OSError, or TVM's own error types from the tracker client
        raise SlimccError(f"cannot reach the TVM RPC tracker at {address}: {first_line(exc)} "
                          "(start one with `python -m tvm.exec.rpc_tracker --port PORT`)") from None


def connect_tracker(host: str, port: int, key: str, timeout: float = 60.0):
    """Ask the TVM RPC tracker at host:port for a device registered under `key`; return its session.

    Waits up to `timeout` seconds for a free device with that key.
    """
    address = f"{host}:{port}"
    tracker = open_tracker(host, port, min(timeout, 10.0))
    try:
        # The tracker answers a request only once a device is free; bound that wait.
        tracker._sock.settimeout(timeout)  # pylint: disable=protected-access
        session = tracker.request(key, session_timeout=0, max_retry=1)
    except Exception as exc:
        raise SlimccError(
            f"no device with key {key!r} from the TVM RPC tracker at {address} within {timeout:g} s: "
            f"{first_line(exc)} (list devices with `python -m tvm.exec.query_rpc_tracker "
            f"--host {host} --port {port}`)"
        ) from exc
    finally:
        tracker.close()
    session.slimcc_address = f"{address} (tracker key {key})"
    return session


def _address(session) -> str:
    return getattr(session, "slimcc_address", "the RPC server")


def upload_and_load(session, so_path: str | Path):
    """Upload the exported library `so_path` to the remote temp folder and load it there.

    The remote file name carries a hash of the content: the remote loader dlopen()s by path, and
    a second library uploaded under an already loaded name (every artifact is model.so) would
    silently resolve to the first one.
    """
    so_path = Path(so_path)
    if not so_path.is_file():
        raise SlimccError(f"library {so_path} not found")
    blob = so_path.read_bytes()
    remote_name = f"{so_path.stem}-{hashlib.sha256(blob).hexdigest()[:16]}{so_path.suffix}"
    try:
        session.upload(bytearray(blob), remote_name)
        return session.load_module(remote_name)
    except Exception as exc:
        raise SlimccError(
            f"loading {so_path.name} on {_address(session)} failed: {first_line(exc)} "
            "(was it compiled for this device's architecture?)"
        ) from exc


def run_vm(session, module, inputs: Sequence[np.ndarray], entry: str = "main") -> list[np.ndarray]:
    """Run the Relax VM function `entry` of a loaded remote module on the remote CPU.

    `inputs` are in the function's parameter order; the outputs come back as numpy arrays,
    tuples flattened in order.
    """
    try:
        device = session.cpu()
        vm = relax.VirtualMachine(module, device)
        args = [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in inputs]
        return _flatten(vm[entry](*args))
    except Exception as exc:
        raise SlimccError(f"running {entry} on {_address(session)} failed: {first_line(exc)}") from exc


def run_remote(
    session, so_path: str | Path, inputs: Sequence[np.ndarray], entry: str = "main"
) -> list[np.ndarray]:
    """Upload, load and run an exported Relax library on the remote device in one call."""
    return run_vm(session, upload_and_load(session, so_path), inputs, entry)


def _flatten(value) -> list[np.ndarray]:
    """Relax VM results (tensor or nested tuple of tensors) -> flat list of numpy arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    out: list[np.ndarray] = []
    for item in value:
        out.extend(_flatten(item))
    return out
