"""Where tuning measures its candidates: this machine, or devices a TVM RPC tracker hands out.

Candidates are always built here (cross-compiled for aarch64); through a tracker they are
exported as shared libraries, uploaded to whichever device of the key is free, timed there and
removed. MetaSchedule's RPC runner keeps up to `parallel` measurements in flight, one per
device session, so a pool of boards measures in parallel. A device that disappears fails only
the measurements it held; records already measured are in the database file.

TVM RPC servers run whatever code they are sent: use them on a trusted network only.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimcc.errors import SlimccError
from slimcc.targets.tvm_import import ensure_tvm


@dataclass(frozen=True)
class MeasureSite:
    """Local measurement (no tracker), or the tracker's address, the device key and how many
    measurements run at once."""

    tracker: tuple[str, int] | None = None
    key: str = ""
    parallel: int = 1

    @property
    def remote(self) -> bool:
        """Whether candidates run on tracker devices rather than on this machine."""
        return self.tracker is not None

    def describe(self) -> str:
        """A short phrase for messages: 'this machine' or 'tracker HOST:PORT key K'."""
        if not self.remote:
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


def make_runner(site: MeasureSite, evaluator_config, timeout_sec: float):
    """MetaSchedule's runner for `site`: LocalRunner here, RPCRunner through the tracker."""
    ensure_tvm()
    from tvm.s_tir import meta_schedule as ms

    if not site.remote:
        return ms.runner.LocalRunner(timeout_sec=timeout_sec, evaluator_config=evaluator_config)
    free_devices(site)
    host, port = site.tracker
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=site.key,
                                 session_priority=1, session_timeout_sec=int(timeout_sec))
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator_config, max_workers=site.parallel,
                               f_alloc_argument=alloc_arguments_from_host)


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
