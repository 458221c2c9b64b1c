"""Compilation targets: x86 (host CPU), arm (aarch64 Linux) and cuda, as TVM 0.27 target dicts.

A `TargetSpec` is plain data (JSON-able) so it can cross a process boundary and be written
into an artifact manifest; `to_tvm()` makes the `tvm.target.Target` only when needed.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from dataclasses import dataclass, field

from slimcc.errors import SlimccError
from slimcc.ir.model import first_line
from slimcc.targets.tvm_import import ensure_tvm

TARGET_NAMES = ("x86", "arm", "cuda")
AARCH64_TRIPLE = "aarch64-linux-gnu"
AARCH64_CXX = "aarch64-linux-gnu-g++"
DEFAULT_CUDA_ARCH = "sm_80"
AMD_SSE4A_CPUS = ("znver", "bdver", "btver", "amdfam10", "barcelona")


@dataclass(frozen=True)
class TargetSpec:
    """One compilation target: a short name, the TVM target dict, its host, and the export compiler."""

    name: str
    tvm: dict
    host: dict | None = None
    cross_compiler: str | None = None
    notes: dict = field(default_factory=dict)

    def to_tvm(self):
        """The `tvm.target.Target` (with its host for GPU targets)."""
        tvm = ensure_tvm()

        try:
            if self.host is not None:
                return tvm.target.Target(self.tvm, host=self.host)
            return tvm.target.Target(self.tvm)
        except Exception as exc:
            raise SlimccError(f"TVM rejects target {self.tvm}: {first_line(exc)}") from None

    def as_dict(self) -> dict:
        """JSON form, as stored in manifests and tuning-database keys."""
        return {"name": self.name, "tvm": self.tvm, "host": self.host,
                "cross_compiler": self.cross_compiler, "notes": dict(self.notes)}

    @classmethod
    def from_dict(cls, data: dict) -> TargetSpec:
        """Inverse of `as_dict`."""
        return cls(name=data["name"], tvm=dict(data["tvm"]), host=data.get("host"),
                   cross_compiler=data.get("cross_compiler"), notes=dict(data.get("notes") or {}))

    @property
    def is_gpu(self) -> bool:
        return self.tvm.get("kind") == "cuda"

    @property
    def runs_on_host(self) -> bool:
        """True when an artifact for this target can be loaded in this process (x86 on an x86 host)."""
        return self.name == "x86"


def host_cpu_name() -> str:
    """The host CPU as LLVM names it (e.g. `skylake-avx512`, `znver3`), for `-mcpu`."""
    ensure_tvm()  # registers TVM's LLVM helpers in tvm_ffi
    import tvm_ffi

    return str(tvm_ffi.get_global_func("target.llvm_get_system_cpu")())


def host_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU has AMX tiles with int8 products (the kernel reports amx_tile and
    amx_int8) and Linux lends them to this process (the request slimcc's AMX kernels make)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            flags = next((set(line.split(":", 1)[1].split()) for line in handle if line.startswith("flags")), set())
    except OSError:
        return False
    return {"amx_tile", "amx_int8"} <= flags and amx_permitted()


@functools.cache
def amx_permitted() -> bool:
    """Whether Linux grants this process the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM; asked
    once per process, the grant lasts)."""
    import ctypes

    from slimcc.targets.schedules.amx_conv import ARCH_REQ_XCOMP_PERM, SYS_ARCH_PRCTL, XFEATURE_XTILEDATA

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def llvm_cpu_is_valid(mcpu: str, triple: str | None = None) -> bool:
    """Whether LLVM knows `mcpu` for `triple` (the host triple when None)."""
    tvm = ensure_tvm()
    import tvm_ffi

    probe = tvm.target.Target({"kind": "llvm", **({"mtriple": triple} if triple else {})})
    return mcpu in set(tvm_ffi.get_global_func("target.llvm_get_cpu_archlist")(probe))


def make_target(name: str, *, mcpu: str | None = None, num_cores: int | None = None,
                int8: bool = False, cuda_arch: str | None = None) -> TargetSpec:
    """Build the target for `name` in TARGET_NAMES.

    x86: llvm, `mcpu` detected from the host unless given, `num-cores` = usable CPUs unless given.
    arm: llvm for aarch64-linux-gnu with NEON (+dotprod when `int8`), exported with aarch64-linux-gnu-g++.
    cuda: `arch` sm_XX (default sm_80, or the local GPU's), host code for the local x86 CPU.
    """
    if name not in TARGET_NAMES:
        raise SlimccError(f"unknown target {name!r}; choose one of: {', '.join(TARGET_NAMES)}")
    if num_cores is not None and num_cores < 1:
        raise SlimccError(f"--num-cores must be >= 1, got {num_cores}")
    if name == "x86":
        cpu = mcpu or host_cpu_name()
        if mcpu and not llvm_cpu_is_valid(mcpu):
            raise SlimccError(f"LLVM does not know --mcpu {mcpu!r} (try e.g. skylake-avx512, znver3, x86-64-v3)")
        cores = num_cores or len(os.sched_getaffinity(0))
        spec = {"kind": "llvm", "mcpu": cpu, "num-cores": cores}
        mattr = []
        if cpu.startswith(AMD_SSE4A_CPUS):  # LLVM packs strided u8/s8 loads with SSE4a insertq: 80x slower on znver3
            mattr.append("-sse4a")
        if mcpu is None and host_has_amx():  # LLVM names some AMX hosts by an older CPU (a VM's masked model)
            mattr += ["+amx-tile", "+amx-int8"]
        if mattr:
            spec["mattr"] = mattr
        return TargetSpec("x86", spec, notes={"mcpu_detected": mcpu is None})
    if name == "arm":
        mattr = ["+neon"] + (["+dotprod"] if int8 else [])
        spec = {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mattr": mattr}
        if mcpu:
            if not llvm_cpu_is_valid(mcpu, AARCH64_TRIPLE):
                raise SlimccError(f"LLVM does not know aarch64 --mcpu {mcpu!r} (try e.g. cortex-a76, neoverse-n1)")
            spec["mcpu"] = mcpu
        if num_cores:
            spec["num-cores"] = num_cores
        return TargetSpec("arm", spec, cross_compiler=AARCH64_CXX)
    arch = cuda_arch or local_cuda_arch() or DEFAULT_CUDA_ARCH
    if not re.fullmatch(r"sm_\d{2,3}[a-z]?", arch):
        raise SlimccError(f"--cuda-arch {arch!r}: expected sm_XX, e.g. sm_80")
    return TargetSpec("cuda", {"kind": "cuda", "arch": arch},
                      host={"kind": "llvm", "mcpu": mcpu or host_cpu_name()},
                      notes={"arch_detected": cuda_arch is None and local_cuda_arch() is not None})


def local_cuda_arch() -> str | None:
    """The compute capability of GPU 0 as sm_XX, or None when there is no usable GPU."""
    tvm = ensure_tvm()

    try:
        dev = tvm.cuda(0)
        if not dev.exist:
            return None
        return "sm_" + str(dev.compute_version).replace(".", "")
    except (RuntimeError, ValueError):  # TVM built without CUDA, or no driver: no usable GPU here
        return None


def cuda_device_available() -> bool:
    """True when a CUDA GPU can run artifacts here (the TVM runtime sees device 0)."""
    return local_cuda_arch() is not None


def nvcc_path() -> str | None:
    """Path of nvcc (PATH, then CUDA_HOME, then /usr/local/cuda), or None."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.access(os.path.join(root, "bin", "nvcc"), os.X_OK):
            return os.path.join(root, "bin", "nvcc")
    return None


def check_toolchain(spec: TargetSpec) -> None:
    """Fail early, with the install command, when the toolchain a target needs is missing."""
    if spec.cross_compiler and shutil.which(spec.cross_compiler) is None:
        raise SlimccError(f"{spec.cross_compiler} not found: install it (Debian/Ubuntu: "
                          "apt-get install g++-aarch64-linux-gnu) to export aarch64 artifacts")
    if spec.is_gpu and nvcc_path() is None:
        raise SlimccError("nvcc not found: install the CUDA toolkit (or put nvcc on PATH / set CUDA_HOME) "
                          "to build CUDA artifacts")
