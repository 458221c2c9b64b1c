"""decompose-tucker: Tucker-2 math, exactness at full rank (hand-built, zoo, PP-OCRv4 det), gates and refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from lowrank_helpers import conv_model, ppocr_det, relative_max_error, with_outputs
from slimcc.errors import PipelineError
from slimcc.ir.model import load_model
from slimcc.ir.verify import assert_equivalent, run_onnxruntime
from slimcc.models.zoo import build
from slimcc.passes.lowrank.decompose_tucker import DecomposeTucker
from slimcc.passes.lowrank.tucker import relative_error, tucker2
from slimcc.passes.pipeline import parse_pipeline


def test_tucker2_full_rank_is_exact_and_hooi_improves_hosvd():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((24, 16, 3, 3))
    assert relative_error(w, tucker2(w, 16, 24).reconstruct()) < 1e-12
    hosvd = relative_error(w, tucker2(w, 8, 8, iters=0).reconstruct())
    hooi = relative_error(w, tucker2(w, 8, 8, iters=5).reconstruct())
    assert 0 < hooi <= hosvd + 1e-12
    # a kernel that truly has Tucker ranks (4, 6) is recovered exactly at those ranks
    low = np.einsum("or,rshw,is->oihw", rng.standard_normal((24, 6)), rng.standard_normal((6, 4, 3, 3)),
                    rng.standard_normal((16, 4)))
    assert relative_error(low, tucker2(low, 4, 6).reconstruct()) < 1e-10


CASES = {
    "plain": dict(pads=[1, 1, 1, 1]),
    "stride2": dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    "asymmetric-pads": dict(pads=[0, 1, 2, 1], strides=[2, 1]),
    "same-upper": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "same-lower": dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    "valid": dict(auto_pad="VALID"),
    "dilated": dict(dilations=[2, 2], pads=[2, 2, 2, 2]),
    "grouped": dict(group=2, pads=[1, 1, 1, 1]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_reproduces_conv(case, bias):
    model = conv_model(bias=bias, size=(11, 13), **CASES[case])
    reference = model.copy()
    result = DecomposeTucker(rank=1.0, force=True).run(model)
    assert result.modified and result.stats["decomposed"] == 1
    assert [n.op for n in model.graph.nodes].count("Conv") == 3
    layer = result.stats["layers"]["conv"]
    assert layer["rel_error"] < 1e-6
    onnx.checker.check_model(model.to_proto(), full_check=True)
    assert_equivalent(reference, model, rel_tol=1e-4)


def test_non_square_kernel():
    model = conv_model(kernel=(5, 3), pads=[2, 1, 2, 1])
    reference = model.copy()
    DecomposeTucker(rank=1.0, force=True).run(model)
    assert_equivalent(reference, model, rel_tol=1e-4)


@pytest.mark.parametrize("name", ["vgg", "resnet-basic", "resnet-bottleneck", "c2f"])
def test_full_rank_on_zoo(name):
    model = load_model(build(name))
    reference = model.copy()
    result = DecomposeTucker(rank=1.0, force=True).run(model)
    assert result.stats["decomposed"] >= 1
    assert all(layer["rel_error"] < 1e-6 for layer in result.stats["layers"].values())
    assert_equivalent(reference, model, rel_tol=1e-4)


@pytest.mark.realmodel
def test_full_rank_on_ppocr_det(real_model_path):
    model = ppocr_det(real_model_path)
    reference = model.copy()
    result = DecomposeTucker(rank=1.0, force=True).run(model)
    assert result.stats["decomposed"] == 6
    assert "depthwise" in result.stats["refused"]["p2o.Conv.1"]
    # the sigmoid output saturates near 0 on random inputs, so compare its logits and the decomposed layers
    logits = next(n for n in model.graph.nodes if n.op == "Sigmoid").inputs[0].name
    names = [logits] + [model.graph.tensors()[t].name for t in ("conv2d_450.tmp_0", "conv2d_497.tmp_0")]
    feeds = {"x": np.random.default_rng(0).uniform(-1, 1, (1, 3, 320, 320)).astype(np.float32)}
    expected = run_onnxruntime(with_outputs(reference, names), feeds)
    actual = run_onnxruntime(with_outputs(model, names), feeds)
    for name in names:
        assert relative_max_error(expected[name], actual[name]) < 1e-4, name


def test_speedup_two_meets_target_with_ranks_in_multiples_of_8():
    model = conv_model(cin=64, cout=64, size=(16, 16), pads=[1, 1, 1, 1])
    result = DecomposeTucker(speedup=2).run(model)
    layer = result.stats["layers"]["conv"]
    assert all(r % 8 == 0 for r in layer["ranks"])
    assert layer["predicted_speedup"] >= 2
    assert layer["ranks"] == [32, 32]  # stride-1 bound: 0.604 * 64 = 38.7, rounded down to 32
    assert 0 < layer["rel_error"] < 1
    # the cost stats agree with the MACs of the emitted convs
    from slimcc.ir.cost import model_cost
    assert sum(c.macs for c in model_cost(model).per_node if c.op == "Conv") == layer["macs_after"]


def test_gate_skips_layers_without_20_percent_saving():
    model = conv_model(cin=16, cout=16, pads=[1, 1, 1, 1])
    result = DecomposeTucker(rank=0.9).run(model)
    assert not result.modified
    assert "saving" in result.stats["skipped"]["conv"]
    assert [n.op for n in model.graph.nodes] == ["Conv", "Relu"]


def test_refusals_are_recorded():
    depthwise = conv_model(cin=16, cout=16, group=16, pads=[1, 1, 1, 1])
    result = DecomposeTucker(rank=1.0, force=True).run(depthwise)
    assert not result.modified and "depthwise" in result.stats["refused"]["conv"]
    pointwise = conv_model(kernel=(1, 1))
    assert "1x1" in DecomposeTucker(rank=1.0, force=True).run(pointwise).stats["refused"]["conv"]


def test_explicit_ranks_energy_and_evbmf():
    model = conv_model(cin=64, cout=64, size=(8, 8), pads=[1, 1, 1, 1])
    result = DecomposeTucker(ranks="conv=8:16").run(model.copy())
    assert result.stats["layers"]["conv"]["ranks"] == [8, 16]
    full = DecomposeTucker(energy=1.0, force=True).run(model.copy())
    assert full.stats["layers"]["conv"]["ranks"] == [64, 64]
    low = DecomposeTucker(energy=0.5, force=True).run(model.copy())
    assert max(low.stats["layers"]["conv"]["ranks"]) < 64
    evb = DecomposeTucker(evbmf=True, floor=0.25, force=True).run(model.copy())
    assert min(evb.stats["layers"]["conv"]["ranks"]) >= 16


def test_pipeline_text_and_option_validation():
    (pass_,) = parse_pipeline("decompose-tucker{rank=0.5,iters=2}")
    assert isinstance(pass_, DecomposeTucker) and pass_.rank == 0.5 and pass_.iters == 2
    with pytest.raises(PipelineError, match="only one"):
        parse_pipeline("decompose-tucker{rank=0.5,speedup=3}")
