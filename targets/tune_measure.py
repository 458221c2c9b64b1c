"""Where tuning measures its candidates: this machine, one TVM RPC server, or the devices a TVM
RPC tracker hands out.

Candidates are always built here (cross-compiled for aarch64); remotely they are exported as
shared libraries, uploaded to the server (or whichever device of the key is free), timed there
and removed. MetaSchedule's RPC runner keeps up to `parallel` measurements in flight, one per
device session, so a pool of boards measures in parallel. A device that disappears fails only
the measurements it held; records already measured are in the database file. Each measurement
notes the device it ran on (`tune_devices`), for per-device progress and counts.

TVM RPC servers run whatever code they are sent: use them on a trusted network only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from slimcc.errors import SlimccError
from slimcc.targets.tune_devices import DeviceTally, note_device, tallied_runner
from slimcc.targets.tvm_import import ensure_tvm


@dataclass(frozen=True)
class MeasureSite:
    """Local measurement; or the tracker's address, the device key and how many measurements run
    at once; or (`server`) the address of a single RPC server, measured one candidate at a time."""

    tracker: tuple[str, int] | None = None
    key: str = ""
    parallel: int = 1
    server: tuple[str, int] | None = None

    def __post_init__(self):
        if self.tracker is not None and self.server is not None:
            raise SlimccError("measure through a tracker (--tracker) or on one RPC server (--rpc), not both")
        if self.server is not None and self.parallel != 1:
            raise SlimccError("one RPC server (--rpc) measures one candidate at a time: drop --parallel, "
                              "or register several devices with a tracker (--tracker)")

    @property
    def remote(self) -> bool:
        """Whether candidates run on an RPC server or tracker devices rather than on this machine."""
        return self.tracker is not None or self.server is not None

    def describe(self) -> str:
        """A short phrase for messages: 'this machine', 'RPC server HOST:PORT' or 'tracker HOST:PORT key K'."""
        if self.server is not None:
            return f"RPC server {self.server[0]}:{self.server[1]}"
        if self.tracker is None:
            return "this machine"
        host, port = self.tracker
        return f"tracker {host}:{port} key {self.key!r}"


def free_devices(site: MeasureSite) -> int:
    """How many devices of `site.key` the tracker lists as free (busy ones still count as
    registered); a one-line error when the tracker cannot be reached or knows no such key."""
    from slimcc.targets.rpc import open_tracker

    host, port = site.tracker
    summary = open_tracker(host, port).summary()
    keys = {str(info.get("key", "")).split(":", 1)[-1] for info in summary.get("server_info", [])}
    if site.key not in keys:
        known = ", ".join(sorted(keys)) or "none"
        raise SlimccError(f"the TVM RPC tracker at {host}:{port} has no device with key {site.key!r} "
                          f"(keys registered: {known}; register a board with `python -m tvm.exec.rpc_server "
                          f"--tracker {host}:{port} --key {site.key}`)")
    return int(summary.get("queue_info", {}).get(site.key, {}).get("free", 0))


def check_server(site: MeasureSite, timeout: float = 10.0) -> None:
    """A one-line error when the RPC server of `site.server` does not accept connections."""
    import socket

    host, port = site.server
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise SlimccError(f"cannot reach the TVM RPC server at {host}:{port}: {exc.strerror or exc} (start one on "
                          f"the device with `python -m tvm.exec.rpc_server --host 0.0.0.0 --port {port}`)") from None


def check_site(site: MeasureSite) -> None:
    """Fail early, in one line, when the RPC server or the tracker's key cannot be reached."""
    if site.server is not None:
        check_server(site)
    elif site.tracker is not None:
        free_devices(site)


def make_runner(site: MeasureSite, evaluator_config, timeout_sec: float, tally: DeviceTally, checkpoint=None):
    """MetaSchedule's runner for `site` (LocalRunner here, RPCRunner on the server or through the
    tracker, checked first with `check_site`), settling every measurement in `tally`, which must
    have a ledger when `site.remote`; `checkpoint` as in `tallied_runner`."""
    ensure_tvm()
    from tvm.s_tir import meta_schedule as ms

    if not site.remote:
        return tallied_runner(ms.runner.LocalRunner(timeout_sec=timeout_sec, evaluator_config=evaluator_config),
                              tally, checkpoint)
    host, port = site.server or site.tracker
    # RPCConfig insists on tracker fields; with --rpc, open_session ignores them
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=site.key or "rpc",
                                 session_priority=1, session_timeout_sec=int(timeout_sec))
    runner = ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator_config, max_workers=site.parallel,
                                 f_create_session=functools.partial(open_session, site),
                                 f_upload_module=functools.partial(upload_noting_device, tally.ledger_path),
                                 f_alloc_argument=alloc_arguments_from_host)
    return tallied_runner(runner, tally, checkpoint)


def open_session(site: MeasureSite, config):
    """RPCRunner's session (in its worker process): the server of `site.server`, or the device the
    tracker hands out for `site.key`; the session carries the device's HOST:PORT as `slimcc_device`.

    MetaSchedule's own tracker request does not say which device it got.
    """
    ensure_tvm()
    from tvm import rpc
    from tvm.rpc import base

    if site.server is not None:
        host, port = site.server
        session = rpc.connect(host, port, session_timeout=config.session_timeout_sec)
    else:
        tracker = config.connect_tracker()
        try:
            base.sendjson(tracker._sock, [base.TrackerCode.REQUEST, site.key, "", config.session_priority])  # pylint: disable=protected-access
            answer = base.recvjson(tracker._sock)  # pylint: disable=protected-access
            if answer[0] != base.TrackerCode.SUCCESS:
                raise RuntimeError(f"the tracker refused a device of key {site.key!r}: {answer}")
            host, port, match_key = answer[1]
            session = rpc.connect(host, port, match_key, config.session_timeout_sec)
        finally:
            tracker.close()
    session.slimcc_device = f"{host}:{port}"
    return session


def upload_noting_device(ledger_path: str, session, local_path: str, remote_path: str):
    """RPCRunner's upload (in its worker process), noting first which device got the candidate."""
    note_device(ledger_path, local_path, session.slimcc_device)
    session.upload(local_path, remote_path)
    return session.load_module(remote_path)


def alloc_arguments_from_host(session, device, args_info, alloc_repeat: int) -> list:
    """RPCRunner's argument allocation with random values made here and copied to the device.

    MetaSchedule's default fills them on the server with `random_fill_for_measure`, which TVM's
    aarch64 wheels do not have: every remote measurement failed there.
    """
    ensure_tvm()
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    return alloc_argument_common(fill_from_host, device, args_info, alloc_repeat)


def fill_from_host(tensor) -> None:
    """Fill a (remote) tensor with seeded values in a small range (integers for integer dtypes)."""
    import numpy as np

    rng = np.random.default_rng(0)
    shape, dtype = tuple(int(d) for d in tensor.shape), np.dtype(str(tensor.dtype))
    values = rng.integers(-8, 8, shape) if dtype.kind in "iu" else rng.uniform(-1.0, 1.0, shape)
    tensor.copyfrom(np.abs(values).astype(dtype) if dtype.kind == "u" else values.astype(dtype))
