"""A TVM RPC tracker and RPC servers on this machine (127.0.0.1): for tests, benches, and trying a
board-farm setup without boards. RPC servers run what they are sent; these listen on loopback only."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

from slimcc.errors import SlimccError
from slimcc.targets.emulate_arm import free_port
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
    servers = []
    for _ in range(count):
        port = free_port()
        servers.append(subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--host", LOOPBACK, "--port", str(port),
             "--port-end", str(port + 1), "--tracker", f"{LOOPBACK}:{tracker_port}", "--key", key],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        wait_registered(tracker_port, key, count, timeout)
        yield servers
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


def wait_registered(tracker_port: int, key: str, count: int = 1, timeout: float = 300.0) -> None:
    """Wait until `count` servers registered with the tracker on 127.0.0.1 under `key`."""
    ensure_tvm()
    from tvm import rpc

    deadline = time.monotonic() + timeout
    while True:
        servers = rpc.connect_tracker(LOOPBACK, tracker_port).summary()["server_info"]
        if sum(str(info["key"]).split(":", 1)[-1] == key for info in servers) >= count:
            return
        if time.monotonic() >= deadline:
            raise SlimccError(f"{count} RPC server(s) with key {key!r} did not register with the tracker "
                              f"on port {tracker_port} within {timeout:g} s")
        time.sleep(0.5)
