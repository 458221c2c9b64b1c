"""A TVM RPC tracker and RPC servers on this machine (127.0.0.1): for tests, benches, and trying a
board-farm setup without boards. RPC servers run what they are sent; these listen on loopback only."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

from slimcc.errors import SlimccError
from slimcc.targets.emulate_arm import free_port, listening_ports
from slimcc.targets.tvm_import import ensure_tvm

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def local_tracker() -> Iterator[int]:
    """A TVM RPC tracker on 127.0.0.1 in this process; yields its port."""
    ensure_tvm()
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host=LOOPBACK, port=free_port(), port_end=65535, silent=True)
    try:
        yield tracker.port
    finally:
        tracker.terminate()


@contextlib.contextmanager
def local_servers(tracker_port: int, key: str, count: int, timeout: float = 120.0) -> Iterator[list]:
    """`count` TVM RPC server processes on 127.0.0.1, registered with the tracker under `key`;
    yields their Popen objects once all have registered."""
    servers = [_start_server(free_port(), ["--tracker", f"{LOOPBACK}:{tracker_port}", "--key", key])
               for _ in range(count)]
    try:
        wait_registered(tracker_port, key, count, timeout)
        yield servers
    finally:
        _stop(servers)


@contextlib.contextmanager
def local_server(timeout: float = 120.0) -> Iterator[int]:
    """One TVM RPC server process on 127.0.0.1 that registers with no tracker (for `--rpc`);
    yields its port once it listens."""
    port = free_port()
    server = _start_server(port, [])
    try:
        deadline = time.monotonic() + timeout
        while port not in listening_ports():
            if server.poll() is not None or time.monotonic() >= deadline:
                raise SlimccError(f"the local RPC server on port {port} did not start within {timeout:g} s")
            time.sleep(0.2)
        yield port
    finally:
        _stop([server])


def _start_server(port: int, extra: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", LOOPBACK, "--port", str(port),
                             "--port-end", str(port + 1), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(servers: list[subprocess.Popen]) -> None:
    for server in servers:
        server.terminate()
        server.wait(timeout=30)


def wait_registered(tracker_port: int, key: str, count: int = 1, timeout: float = 300.0) -> None:
    """Wait until `count` servers registered with the tracker on 127.0.0.1 under `key`."""
    deadline = time.monotonic() + timeout
    while True:
        if len(registered_devices(tracker_port, key)) >= count:
            return
        if time.monotonic() >= deadline:
            raise SlimccError(f"{count} RPC server(s) with key {key!r} did not register with the tracker "
                              f"on port {tracker_port} within {timeout:g} s")
        time.sleep(0.5)


def registered_devices(tracker_port: int, key: str) -> list[str]:
    """'HOST:PORT' of each server registered under `key` with the tracker on 127.0.0.1, sorted."""
    ensure_tvm()
    from tvm import rpc

    servers = rpc.connect_tracker(LOOPBACK, tracker_port).summary()["server_info"]
    return sorted(f"{info['addr'][0]}:{info['addr'][1]}" for info in servers
                  if str(info["key"]).split(":", 1)[-1] == key)
