"""Which device measured which tuning candidate: per-device counts and a progress line per batch.

MetaSchedule's RPC runner measures in worker processes and hands back only timings, so the
worker notes the device it was given for each candidate in a ledger file (one JSON line per
upload, `note_device`); a runner wrapper (`tallied_runner`) settles each result against that
ledger in this process, counts measured/failed candidates per device, and reports one line
when a batch is complete. A candidate that failed before any device was handed out counts
under NO_DEVICE.
"""

from __future__ import annotations

import json
import os
import tempfile
import weakref
from collections.abc import Callable

from slimcc.targets.tvm_import import ensure_tvm

NO_DEVICE = "no device"


class DeviceTally:
    """Measured and failed candidates per device, for one tuning run.

    `device` names the only device when there is no ledger (measuring on this machine);
    `report` receives one line per completed batch (None: silent).
    """

    def __init__(self, ledger: bool, device: str = "this machine", report: Callable[[str], None] | None = None):
        self.device = device
        self.report = report
        self.counts: dict[str, dict[str, int]] = {}
        self.ledger_path: str | None = None
        self._artifact_devices: dict[str, str] = {}
        self._offset = 0
        if ledger:
            fd, self.ledger_path = tempfile.mkstemp(prefix="slimcc-tune-devices-", suffix=".jsonl")
            os.close(fd)
            weakref.finalize(self, _remove, self.ledger_path)

    def device_of(self, artifact: str) -> str:
        """The device the ledger names for a candidate's artifact (NO_DEVICE if none was noted)."""
        if self.ledger_path is None:
            return self.device
        if artifact not in self._artifact_devices:
            self._read_ledger()
        return self._artifact_devices.get(artifact, NO_DEVICE)

    def settle(self, artifact: str, ok: bool) -> str:
        """Count one finished measurement; returns the device it ran on."""
        device = self.device_of(artifact)
        _count(self.counts, device, ok)
        return device

    def as_dict(self) -> dict[str, dict[str, int]]:
        """{device: {"measured": n, "failed": m}}, devices sorted by name."""
        return {device: dict(self.counts[device]) for device in sorted(self.counts)}

    def _read_ledger(self) -> None:
        with open(self.ledger_path, "rb") as handle:
            handle.seek(self._offset)
            text = handle.read()
        complete = text[:text.rfind(b"\n") + 1]  # a line being written is read next time
        self._offset += len(complete)
        for line in complete.decode().splitlines():
            entry = json.loads(line)
            self._artifact_devices[entry["artifact"]] = entry["device"]


def describe_counts(counts: dict[str, dict[str, int]]) -> str:
    """'127.0.0.1:9091 8 measured, 127.0.0.1:9092 7 measured 1 failed' for messages."""
    parts = []
    for device, row in counts.items():
        text = f"{device} {row['measured']} measured"
        parts.append(text + (f" {row['failed']} failed" if row["failed"] else ""))
    return ", ".join(parts) or "nothing measured"


def note_device(ledger_path: str, artifact: str, device: str) -> None:
    """Append {artifact, device} to the ledger (in a runner worker process; one atomic append)."""
    line = json.dumps({"artifact": artifact, "device": device}) + "\n"
    fd = os.open(ledger_path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def tallied_runner(inner, tally: DeviceTally, checkpoint: Callable[[], None] | None = None):
    """A MetaSchedule runner that measures with `inner` and settles every result in `tally`.

    `checkpoint` is called before each batch is sent and each result is collected: points where
    MetaSchedule runs no threads of its own, so an exception raised there (a deferred Ctrl-C)
    unwinds cleanly.
    """
    checkpoint = checkpoint or (lambda: None)
    ensure_tvm()
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture

    @derived_object
    class TalliedFuture(PyRunnerFuture):
        def __init__(self, future, artifact: str, batch: _Batch):
            super().__init__()
            self.future, self.artifact, self.batch = future, artifact, batch
            self.outcome = None

        def done(self) -> bool:
            return self.future.done()

        def result(self):
            if self.outcome is None:
                checkpoint()
                self.outcome = self.future.result()
                self.batch.settle(self.artifact, self.outcome.error_msg is None)
            return self.outcome

    @derived_object
    class TalliedRunner(PyRunner):
        def __init__(self):
            super().__init__()

        def run(self, runner_inputs):
            checkpoint()
            batch = _Batch(tally, len(runner_inputs))
            futures = inner.run(runner_inputs)
            return [TalliedFuture(future, str(given.artifact_path), batch)
                    for future, given in zip(futures, runner_inputs)]

    return TalliedRunner()


class _Batch:
    """The candidates of one runner call: reports their per-device counts once all are settled."""

    def __init__(self, tally: DeviceTally, size: int):
        self.tally, self.size = tally, size
        self.counts: dict[str, dict[str, int]] = {}

    def settle(self, artifact: str, ok: bool) -> None:
        _count(self.counts, self.tally.settle(artifact, ok), ok)
        if self.tally.report is not None and sum(sum(r.values()) for r in self.counts.values()) == self.size:
            self.tally.report(f"batch of {self.size}: {describe_counts(dict(sorted(self.counts.items())))}")


def _count(counts: dict[str, dict[str, int]], device: str, ok: bool) -> None:
    row = counts.setdefault(device, {"measured": 0, "failed": 0})
    row["measured" if ok else "failed"] += 1


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
