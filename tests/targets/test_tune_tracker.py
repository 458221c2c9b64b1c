"""Tuning through a TVM RPC tracker or on one RPC server (on 127.0.0.1 only): candidates built
here, measured on the devices the tracker hands out, counted per device; errors for an
unreachable tracker or server, an unknown key, or a target this machine cannot measure; a lost
device and an interrupted run keep every stored record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from slimcc.errors import SlimccError
from slimcc.ir.model import write_onnx
from slimcc.models import zoo
from slimcc.targets.compiler import compile_model, prepare_model
from slimcc.targets.emulate_arm import free_port
from slimcc.targets.local_rpc import local_server, local_servers, local_tracker
from slimcc.targets.runner import load_artifact
from slimcc.targets.target import make_target
from slimcc.targets.tune import record_count, tune_model
from slimcc.targets.tune_measure import MeasureSite

from targets_helpers import assert_matches_onnxruntime, feeds_for, measured_record_count
from test_tune_one_conv import one_conv_model

tvm = pytest.importorskip("tvm")


def test_unreachable_tracker_is_a_one_line_error(x86, tmp_path):
    site = MeasureSite(("127.0.0.1", free_port()), "x86")
    with pytest.raises(SlimccError, match="cannot reach the TVM RPC tracker") as err:
        tune_model(prepare_model(one_conv_model()), x86, 4, database_dir=tmp_path / "db", progress=False, site=site)
    assert "\n" not in str(err.value)


def test_key_without_devices_names_the_registered_keys(x86, tmp_path):
    with local_tracker() as port:
        with pytest.raises(SlimccError, match="no device with key 'rk3588'.*keys registered: none"):
            tune_model(prepare_model(one_conv_model()), x86, 4, database_dir=tmp_path / "db", progress=False,
                       site=MeasureSite(("127.0.0.1", port), "rk3588"))


def test_cli_tracker_needs_a_key(tmp_path, capsys):
    from slimcc.cli import main

    model_path = tmp_path / "conv.onnx"
    model_path.write_bytes(one_conv_model().SerializeToString())
    code = main(["tune", str(model_path), "--trials", "4", "--tracker", "127.0.0.1:9190"])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert "--tracker needs --key" in err and len(err.splitlines()) == 1


def test_unreachable_rpc_server_is_a_one_line_error(x86, tmp_path):
    site = MeasureSite(server=("127.0.0.1", free_port()))
    with pytest.raises(SlimccError, match="cannot reach the TVM RPC server at 127.0.0.1") as err:
        tune_model(prepare_model(one_conv_model()), x86, 4, database_dir=tmp_path / "db", progress=False, site=site)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("site, expected", [
    (dict(tracker=("127.0.0.1", 9190), key="k", server=("127.0.0.1", 9090)), "not both"),
    (dict(server=("127.0.0.1", 9090), parallel=2), "one candidate at a time"),
])
def test_one_rpc_server_is_neither_a_tracker_nor_parallel(site, expected):
    with pytest.raises(SlimccError, match=expected):
        MeasureSite(**site)


@pytest.mark.slow
@pytest.mark.tuning
def test_tuning_on_one_rpc_server_without_a_tracker(tmp_path, capsys):
    """--rpc HOST:PORT: the same build and measurement path as a tracker, on one server; the CLI
    prints a progress line per measured batch naming the server, and counts it in its JSON."""
    from slimcc.cli import main

    model_path = tmp_path / "conv.onnx"
    model_path.write_bytes(one_conv_model().SerializeToString())
    db = tmp_path / "db"
    with local_server() as port:
        code = main(["tune", str(model_path), "--trials", "4", "--num-cores", "1", "--db", str(db),
                     "--rpc", f"127.0.0.1:{port}", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    device = f"127.0.0.1:{port}"
    assert summary["measured_on"] == f"RPC server {device}"
    assert summary["devices"] == {device: {"measured": measured_record_count(db), "failed": 0}}
    assert summary["devices"][device]["measured"] > 1  # slimcc's seed and searched candidates
    batch_lines = [line for line in captured.err.splitlines() if "batch of" in line]
    assert batch_lines and all(device in line for line in batch_lines)


@pytest.mark.slow
@pytest.mark.tuning
def test_tuning_through_a_tracker_with_two_local_servers(tmp_path):
    """Two x86 servers share this machine's 2 cores: timings are for the plumbing, not speed."""
    spec = make_target("x86", num_cores=1)
    model = prepare_model(one_conv_model())
    db = tmp_path / "db"
    with local_tracker() as port, local_servers(port, "x86-local", 2):
        summary = tune_model(model, spec, 8, database_dir=db, progress=False,
                             site=MeasureSite(("127.0.0.1", port), "x86-local", parallel=2))
    assert summary["new_records"] == record_count(db) > 1  # slimcc's seed and searched candidates
    assert measured_record_count(db) > 1 and not summary["seed_failures"]
    assert "tracker 127.0.0.1" in summary["measured_on"]
    assert len(summary["devices"]) == 2 and all(row["measured"] for row in summary["devices"].values())
    assert sum(row["measured"] for row in summary["devices"].values()) == measured_record_count(db)
    manifest = compile_model(model, spec, tmp_path / "art", database_dir=db, isolate=False)
    assert manifest.build["tuned_kernels"] >= 1  # the conv (and its output's conversion to NCHW)
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)


def tune_and_lose_a_device(tune, db, records: int, kill, timeout: float = 900) -> tuple[list, list, dict]:
    """Run `tune()` (returning its summary) in a thread; once the database `db` holds `records`
    records, `kill()` a device; wait for the run to complete (asserted).
    Returns (record lines before the loss, record lines after the run, the summary)."""
    import threading

    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(summary=tune()))
    worker.start()
    deadline = time.monotonic() + timeout
    while record_count(db) < records and worker.is_alive():
        assert time.monotonic() < deadline, "no records measured"
        time.sleep(0.2)
    before = (db / "database_tuning_record.json").read_text().splitlines()
    kill()
    worker.join(timeout=timeout)
    assert not worker.is_alive() and "summary" in outcome, "the run did not complete after the loss"
    return before, (db / "database_tuning_record.json").read_text().splitlines(), outcome["summary"]


@pytest.mark.slow
@pytest.mark.tuning
def test_a_device_lost_mid_tuning_costs_only_its_measurements(zoo_model, tmp_path):
    """One of two servers is killed once records exist: the run finishes on the other, and every
    record stored before the loss is still in the database afterwards."""
    spec = make_target("x86", num_cores=1)
    model = zoo_model("resnet-basic")  # a dozen kernels: the search is still going when a server dies
    db = tmp_path / "db"
    with local_tracker() as port, local_servers(port, "x86-pool", 2) as servers:
        before, after, summary = tune_and_lose_a_device(
            lambda: tune_model(model, spec, 48, database_dir=db, progress=False,
                               site=MeasureSite(("127.0.0.1", port), "x86-pool", parallel=2)),
            db, 2, servers[0].kill)
    assert after[:len(before)] == before and len(after) > len(before)
    assert measured_record_count(db) > len(before)  # measurements went on after the loss
    assert sum(row["measured"] for row in summary["devices"].values()) == measured_record_count(db)


@pytest.mark.slow
@pytest.mark.tuning
def test_an_interrupted_run_through_a_tracker_keeps_its_records_and_a_rerun_extends_them(tmp_path):
    """`slimcc tune --tracker` interrupted with Ctrl-C (SIGINT) while searching: a one-line error
    that says the records are kept (no abort from MetaSchedule's threads); the same command then
    extends them."""
    model_path, db = tmp_path / "mobilenetv2.onnx", tmp_path / "db"
    write_onnx(zoo.build("mobilenetv2", seed=0), model_path)  # a dozen kernels: still searching when stopped
    records_file = db / "database_tuning_record.json"
    with local_tracker() as port, local_servers(port, "x86-resume", 1):
        # enough trials that the first run is still searching at 16 records (with 48, MetaSchedule's
        # 4 trials per kernel could end the run first, and the interrupt found nothing to stop)
        command = [sys.executable, "-m", "slimcc.cli", "--quiet", "tune", str(model_path), "--trials", "160",
                   "--num-cores", "1", "--db", str(db), "--tracker", f"127.0.0.1:{port}", "--key", "x86-resume",
                   "--json"]
        env = dict(os.environ, SLIMCC_DEBUG="0")
        first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 300
        while record_count(db) < 16 and first.poll() is None:  # past the seeds (one per kernel, at most 12)
            assert time.monotonic() < deadline, "no records measured"
            time.sleep(0.2)
        assert first.poll() is None, "the first run ended before it could be interrupted"
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
        assert first.returncode == 2 and out == "", err
        assert "tuning interrupted" in err and f"kept in {db}" in err and len(err.strip().splitlines()) == 1, err
        kept = records_file.read_text().splitlines()
        assert len(kept) >= 16

        second = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    records = records_file.read_text().splitlines()
    assert records[:len(kept)] == kept and summary["records"] == len(records) > len(kept)
    assert summary["devices"] and all(row["measured"] for row in summary["devices"].values())
