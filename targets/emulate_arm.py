"""Run a TVM RPC server inside an emulated aarch64 Linux (qemu-user + a Debian arm64 sysroot).

This gives the same code path as a real ARM board: the host cross-compiles an aarch64 library,
uploads it over RPC and runs it remotely.  The sysroot (Debian python3.11 unpacked with dpkg -x
plus the manylinux aarch64 wheels of apache-tvm and its needs) is built by `.ci/setup_arm.sh`,
also reachable as ``python -m slimcc.targets.emulate_arm setup``.

TVM's RPC server starts its worker process with ``sys.executable``; without binfmt_misc the host
kernel cannot exec an aarch64 binary.  A host-side wrapper script (written next to the sysroot)
re-enters qemu, and a ``sitecustomize`` module points the emulated ``sys.executable`` at it.

Usage:
    python -m slimcc.targets.emulate_arm setup
    python -m slimcc.targets.emulate_arm serve --port 9090
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from slimcc.errors import SlimccError, exit_status

SYSROOT_ENV = "SLIMCC_ARM_SYSROOT"
DEFAULT_SYSROOT = Path.home() / ".cache" / "slimcc" / "arm-sysroot"
SETUP_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "setup_arm.sh"
SETUP_COMMAND = "python -m slimcc.targets.emulate_arm setup"
DEFAULT_HOST = "127.0.0.1"

_SITECUSTOMIZE = '''\
"""Written by slimcc.targets.emulate_arm: make child processes re-enter qemu."""
import os
import sys

_wrapper = os.environ.get("SLIMCC_ARM_PYTHON")
if _wrapper:
    sys.executable = _wrapper
'''


@dataclass(frozen=True)
class Emulator:
    """Resolved paths of a ready emulation setup."""

    qemu: Path
    sysroot: Path
    python: Path  # the aarch64 interpreter inside the sysroot
    site_packages: Path
    launcher: Path  # host-side wrapper: runs the aarch64 python under qemu

    def command(self, *args: str) -> list[str]:
        """Command line that runs the emulated python with `args`."""
        return [str(self.launcher), *args]


def default_sysroot() -> Path:
    """The sysroot folder: $SLIMCC_ARM_SYSROOT or ~/.cache/slimcc/arm-sysroot."""
    return Path(os.environ.get(SYSROOT_ENV) or DEFAULT_SYSROOT).expanduser()


def setup(sysroot: Path | None = None) -> None:
    """Install qemu, the cross compiler and the arm64 sysroot by running .ci/setup_arm.sh.

    Needs root (apt-get) unless the host packages are already installed.
    """
    sysroot = sysroot or default_sysroot()
    if not SETUP_SCRIPT.is_file():
        raise SlimccError(
            f"{SETUP_SCRIPT} not found: run the setup from a slimcc source checkout "
            "(bash .ci/setup_arm.sh)"
        )
    result = subprocess.run(["bash", str(SETUP_SCRIPT), str(sysroot)], check=False)
    if result.returncode != 0:
        raise SlimccError(
            f"ARM emulation setup failed (exit {result.returncode}); see the output above "
            "(it needs root for apt-get and access to the Debian and PyPI registries)"
        )


def find_emulator(sysroot: Path | None = None) -> Emulator:
    """Locate qemu-aarch64 and a complete sysroot, writing the launcher; SlimccError if missing."""
    sysroot = (sysroot or default_sysroot()).expanduser().resolve()
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise SlimccError(f"qemu-aarch64 not found: run `{SETUP_COMMAND}` (installs qemu-user)")
    python = sysroot / "usr" / "bin" / "python3.11"
    site_packages = sysroot / "opt" / "slimcc" / "site-packages"
    if not python.is_file() or not (site_packages / ".slimcc-wheels-done").is_file():
        raise SlimccError(
            f"aarch64 sysroot incomplete at {sysroot}: run `{SETUP_COMMAND}` "
            f"(or set {SYSROOT_ENV} to a sysroot made by .ci/setup_arm.sh)"
        )
    launcher = _write_launcher(Path(qemu), sysroot, python, site_packages)
    return Emulator(Path(qemu), sysroot, python, site_packages, launcher)


def _write_launcher(qemu: Path, sysroot: Path, python: Path, site_packages: Path) -> Path:
    """Write (if changed) the host wrapper script and the sitecustomize it relies on."""
    folder = sysroot.parent / (sysroot.name + ".launcher")
    folder.mkdir(parents=True, exist_ok=True)
    _write_if_changed(folder / "sitecustomize.py", _SITECUSTOMIZE)
    launcher = folder / "python3-aarch64"
    pythonpath = f"{folder}:{site_packages}"
    script = (
        "#!/bin/sh\n"
        "# Written by slimcc.targets.emulate_arm: run the aarch64 python of the sysroot under qemu.\n"
        f"export SLIMCC_ARM_PYTHON={shlex.quote(str(launcher))}\n"
        f"export PYTHONPATH={shlex.quote(pythonpath)}\n"
        "export PYTHONNOUSERSITE=1\n"
        # The server only needs the TVM runtime; skipping the 240 MB compiler library makes an
        # emulated start several times faster.  Export TVM_USE_RUNTIME_LIB=0 to load it anyway.
        'export TVM_USE_RUNTIME_LIB="${TVM_USE_RUNTIME_LIB:-1}"\n'
        f"exec {shlex.quote(str(qemu))} -L {shlex.quote(str(sysroot))} "
        f'{shlex.quote(str(python))} "$@"\n'
    )
    _write_if_changed(launcher, script)
    launcher.chmod(0o755)
    return launcher


def _write_if_changed(path: Path, text: str) -> None:
    """Atomically replace `path` with `text` unless it already holds exactly that text."""
    if path.is_file() and path.read_text() == text:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def server_command(
    emulator: Emulator,
    host: str = DEFAULT_HOST,
    port: int = 9090,
    tracker: str | None = None,
    key: str = "",
) -> list[str]:
    """Command line of `tvm.exec.rpc_server` under emulation, bound to exactly host:port."""
    args = ["-m", "tvm.exec.rpc_server", "--host", host, "--port", str(port)]
    args += ["--port-end", str(port + 1)]
    if tracker:
        args += ["--tracker", tracker, "--key", key or "aarch64"]
    elif key:
        args += ["--key", key]
    return emulator.command(*args)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class EmulatedServer:
    """A running emulated RPC server: where it listens and its process (leader of its group)."""

    host: str
    port: int
    process: subprocess.Popen

    def kill(self) -> None:
        """Kill the server's whole process group at once, as if the board lost power."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def emulated_rpc_server(*args, **kwargs) -> Iterator[tuple[str, int]]:
    """`emulated_rpc_server_process` (same arguments), yielding only (host, port)."""
    with emulated_rpc_server_process(*args, **kwargs) as server:
        yield server.host, server.port


@contextlib.contextmanager
def emulated_rpc_server_process(
    port: int | None = None,
    host: str = DEFAULT_HOST,
    sysroot: Path | None = None,
    tracker: str | None = None,
    key: str = "",
    start_timeout: float = 600.0,
) -> Iterator[EmulatedServer]:
    """Start an emulated aarch64 TVM RPC server, yield an EmulatedServer once it listens (with its
    process, e.g. to kill it), then stop it.

    `port=None` picks a free port.  With `tracker="HOST:PORT"` the server also registers there
    under `key`.  The server runs in its own process group, killed as a whole on exit.
    """
    emulator = find_emulator(sysroot)
    port = port or free_port(host)
    with tempfile.TemporaryDirectory(prefix="slimcc-arm-rpc-") as workdir:
        log_path = Path(workdir) / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                server_command(emulator, host, port, tracker, key),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                start_new_session=True,
            )
        try:
            _wait_listening(proc, host, port, start_timeout, log_path)
            yield EmulatedServer(host, port, proc)
        finally:
            _stop_group(proc)


def _wait_listening(
    proc: subprocess.Popen, host: str, port: int, timeout: float, log_path: Path
) -> None:
    """Block until the server listens on `port`; SlimccError if it dies or stalls.

    Probing with a connection would make a tracker-registered server drop its tracker link and
    re-register under a new match key, so the kernel's socket table is read instead.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SlimccError(
                f"emulated RPC server on {host}:{port} exited with code {proc.returncode}: "
                f"{_tail(log_path)}"
            )
        if port in listening_ports():
            return
        time.sleep(0.5)
    raise SlimccError(
        f"emulated RPC server on {host}:{port} did not listen within {timeout:.0f} s: "
        f"{_tail(log_path)}"
    )


def listening_ports() -> set[int]:
    """TCP ports in LISTEN state on this host (Linux /proc/net/tcp{,6})."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            next(handle, None)
            for line in handle:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":  # 0A = TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _tail(log_path: Path, lines: int = 5) -> str:
    """Last lines of the server log, joined on one line for an error message."""
    text = log_path.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) if text else "(no output)"


def _stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Terminate the server's whole process group (server, popen worker, session workers)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    # Forked session workers may outlive the leader for a moment; make sure none is left.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _serve(args: argparse.Namespace) -> int:
    """Run the emulated server in the foreground until interrupted."""
    emulator = find_emulator(args.sysroot)
    command = server_command(emulator, args.host, args.port, args.tracker, args.key)
    print(f"serving aarch64 TVM RPC on {args.host}:{args.port} (qemu, sysroot {emulator.sysroot})")
    try:
        return subprocess.run(command, check=False).returncode
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    """Command line: `setup` builds the emulation environment, `serve` runs an RPC server."""
    parser = argparse.ArgumentParser(
        prog="python -m slimcc.targets.emulate_arm", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--sysroot", type=Path, default=None, help=f"default: ${SYSROOT_ENV} or {DEFAULT_SYSROOT}"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="install qemu-user, the aarch64 cross compiler and the arm64 sysroot")
    serve = sub.add_parser("serve", help="run tvm.exec.rpc_server under qemu-aarch64")
    serve.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=9090)
    serve.add_argument("--tracker", default=None, help="HOST:PORT of a TVM RPC tracker to register with")
    serve.add_argument("--key", default="", help="device key reported to the tracker (default aarch64)")
    args = parser.parse_args(argv)
    return exit_status(lambda: setup(args.sysroot) if args.command == "setup" else _serve(args))


if __name__ == "__main__":
    sys.exit(main())
