"""The model zoo: valid ONNX, runnable, O(1) outputs, seeded, with the structures passes rely on."""

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from slimcc.errors import SlimccError
from slimcc.models.data import zoo_inputs
from slimcc.models.zoo import ZOO, build

NAMES = list(ZOO)


def output_shape(name: str, size: int = 32) -> tuple[int, ...]:
    """Class scores [1, 10]; crnn: CTC label probabilities per column [size/4, 1, 10 + blank]
    (attn-ctc: batch-first, [1, size/4, 10 + blank])."""
    return {"crnn": (size // 4, 1, 11), "attn-ctc": (1, size // 4, 11)}.get(name, (1, 10))


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def consumers(proto: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in proto.graph.node if tensor in n.input]


def producer(proto: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in proto.graph.node if tensor in n.output), None)


def attr(node: onnx.NodeProto, name: str, default=None):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


@pytest.fixture(scope="module")
def zoo() -> dict[str, onnx.ModelProto]:
    return {name: build(name) for name in NAMES}


def test_zoo_has_the_announced_names(zoo_names):
    assert zoo_names == ["vgg", "resnet-basic", "resnet-bottleneck", "mobilenetv2", "mobilenetv3", "c2f", "shufflenet",
                         "shufflenet-v1", "conv-gemm", "crnn", "attn-ctc"]


@pytest.mark.parametrize("name", NAMES)
def test_valid_model_with_fixed_interface(zoo, name):
    proto = zoo[name]
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == 8
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    (inp,) = proto.graph.input
    assert inp.name == "x" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 32, 32]
    assert [o.name for o in proto.graph.output] == ["y"]


@pytest.mark.parametrize("name", NAMES)
def test_runs_with_finite_order_one_outputs(zoo, name):
    sess = session(zoo[name])
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}] + zoo_inputs(2, size=32)
    outputs = [sess.run(["y"], feed)[0] for feed in feeds]
    for y in outputs:
        assert y.shape == output_shape(name)
        assert np.all(np.isfinite(y))
        # activations stay O(1): no blow-up or collapse through depth
        assert 0.05 < np.abs(y).max() < 50
    # the output depends on the input
    assert not np.allclose(outputs[0], outputs[1])


@pytest.mark.parametrize("name", NAMES)
def test_every_conv_feeds_an_unfolded_batchnorm(zoo, name):
    proto = zoo[name]
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    # squeeze-excitation convs (mobilenetv3) carry a bias and no BatchNormalization, as in MobileNetV3
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and ".se." not in n.name]
    assert convs
    for conv in convs:
        (bn,) = consumers(proto, conv.output[0])
        assert bn.op_type == "BatchNormalization"
        gamma, beta, mean, var = (inits[t] for t in bn.input[1:5])
        assert np.all(var > 0)
        assert np.std(gamma) > 0.05 and np.abs(beta).max() > 0 and np.abs(mean).max() > 0


def ops(proto):
    return [n.op_type for n in proto.graph.node]


def test_vgg_structure(zoo):
    proto = zoo["vgg"]
    assert ops(proto).count("MaxPool") == 3
    flatten = next(n for n in proto.graph.node if n.op_type == "Flatten")
    assert producer(proto, flatten.input[0]).op_type == "MaxPool"
    assert consumers(proto, flatten.output[0])[0].op_type == "Gemm"


def test_resnet_basic_has_strided_projection_shortcuts(zoo):
    proto = zoo["resnet-basic"]
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    assert len(adds) == 3
    projections = [n for n in proto.graph.node if n.op_type == "Conv" and attr(n, "kernel_shape") == [1, 1]]
    assert [attr(n, "strides") for n in projections] == [[2, 2], [2, 2]]
    assert ops(proto)[-3:] == ["GlobalAveragePool", "Flatten", "Gemm"]


def test_resnet_bottleneck_blocks(zoo):
    proto = zoo["resnet-bottleneck"]
    inits = {t.name: t for t in proto.graph.initializer}
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    assert len(adds) == 3
    # each block ends with a 1x1 conv expanding 4x over its 3x3 conv
    for add in adds:
        bn = producer(proto, add.input[0])
        conv3 = producer(proto, bn.input[0])
        w = inits[conv3.input[1]].dims
        assert w[2:] == [1, 1] and w[0] == 4 * w[1]


def test_mobilenetv2_inverted_residuals(zoo):
    proto = zoo["mobilenetv2"]
    inits = {t.name: t for t in proto.graph.initializer}
    depthwise = [n for n in proto.graph.node if n.op_type == "Conv" and attr(n, "group", 1) > 1]
    assert len(depthwise) == 5
    for conv in depthwise:
        assert inits[conv.input[1]].dims[0] == attr(conv, "group") and inits[conv.input[1]].dims[1] == 1
    assert ops(proto).count("Clip") > 0 and "Relu" not in ops(proto)
    assert ops(proto).count("Add") == 3  # every stride-1 block keeping its width


def test_c2f_split_concat_silu(zoo):
    proto = zoo["c2f"]
    splits = [n for n in proto.graph.node if n.op_type == "Split"]
    assert len(splits) == 2
    for split in splits:
        concat = next(n for n in proto.graph.node if n.op_type == "Concat" and split.output[0] in n.input)
        assert split.output[0] in concat.input
    silu = [n for n in proto.graph.node if n.op_type == "Mul"]
    assert silu and all(producer(proto, m.input[1]).op_type == "Sigmoid" for m in silu)
    assert ops(proto).count("Add") == 3  # shortcut bottlenecks: 1 + 2


def test_shufflenet_channel_shuffle(zoo):
    proto = zoo["shufflenet"]
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    transposes = [n for n in proto.graph.node if n.op_type == "Transpose"]
    assert len(transposes) == 4
    for t in transposes:
        before, after = producer(proto, t.input[0]), consumers(proto, t.output[0])[0]
        assert before.op_type == after.op_type == "Reshape" and attr(t, "perm") == [0, 2, 1, 3, 4]
        assert inits[before.input[1]][1] == 2  # two groups
        assert producer(proto, before.input[0]).op_type == "Concat"
    assert ops(proto).count("Split") == 2


def test_conv_gemm_head(zoo):
    proto = zoo["conv-gemm"]
    assert ops(proto)[:3] == ["Conv", "BatchNormalization", "Relu"]
    flatten = next(n for n in proto.graph.node if n.op_type == "Flatten")
    assert consumers(proto, flatten.output[0])[0].op_type == "Gemm"
    assert ops(proto).count("Gemm") == 2


def test_crnn_reads_columns_with_a_bidirectional_lstm(zoo):
    proto = zoo["crnn"]
    inits = {t.name: t for t in proto.graph.initializer}
    (lstm,) = [n for n in proto.graph.node if n.op_type == "LSTM"]
    assert attr(lstm, "direction") == b"bidirectional" and attr(lstm, "hidden_size") == 32
    assert inits[lstm.input[1]].dims == [2, 128, 64]  # 4 gates x 32 hidden, over 64 conv channels
    assert producer(proto, producer(proto, lstm.input[0]).input[0]).op_type == "Squeeze"  # [1, C, T] -> [T, 1, C]
    pool = producer(proto, producer(proto, producer(proto, lstm.input[0]).input[0]).input[0])
    assert pool.op_type == "MaxPool" and attr(pool, "kernel_shape") == [8, 1]  # the height pooled to 1
    assert ops(proto)[-3:] == ["MatMul", "Add", "Softmax"]


def test_attn_ctc_runs_transformer_blocks_on_batch_first_columns(zoo):
    proto = zoo["attn-ctc"]
    inits = {t.name: t for t in proto.graph.initializer}
    embed = next(n for n in proto.graph.node if n.name == "embed.conv")
    pool = producer(proto, embed.input[0])
    assert pool.op_type == "MaxPool" and attr(pool, "kernel_shape") == [8, 1]  # the height pooled to 1
    assert attr(embed, "kernel_shape") == [1, 1]
    squeeze = consumers(proto, consumers(proto, embed.output[0])[0].output[0])[0]
    assert squeeze.op_type == "Squeeze"
    (to_sequence,) = consumers(proto, squeeze.output[0])
    assert to_sequence.op_type == "Transpose" and attr(to_sequence, "perm") == [0, 2, 1]  # [1, C, T] -> [1, T, C]
    # every constant-weight MatMul is a Linear: [in, out] weight, then a bias Add over the last axis
    linears = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert len(linears) == 2 * 6 + 1  # per block q, k, v, out, fc1, fc2; then the CTC head
    for matmul in linears:
        (add,) = consumers(proto, matmul.output[0])
        bias = next(inits[t] for t in add.input if t in inits)
        assert add.op_type == "Add" and list(bias.dims) == [inits[matmul.input[1]].dims[1]]
    assert inits["head.weight"].dims == [32, 11]
    assert ops(proto).count("LayerNormalization") == 5 and ops(proto).count("Softmax") == 3
    scores = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] not in inits]
    assert len(scores) == 4  # Q K^T and weights V in both blocks
    assert ops(proto)[-4:] == ["LayerNormalization", "MatMul", "Add", "Softmax"]
    residuals = [n for n in proto.graph.node if n.op_type == "Add" and n.name.endswith(("residual1", "residual2"))]
    assert len(residuals) == 4


def digest(proto):
    return hashlib.sha256(proto.SerializeToString()).hexdigest()


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_per_seed_and_different_across_seeds(zoo, name):
    assert digest(build(name, seed=0)) == digest(zoo[name])
    other = build(name, seed=1)
    assert digest(other) != digest(zoo[name])
    assert ops(other) == ops(zoo[name])


@pytest.mark.parametrize("name", NAMES)
def test_size_and_width_scale_the_model(name):
    proto = build(name, size=48, width=8)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 48, 48]
    first = proto.graph.node[0]
    weight = next(t for t in proto.graph.initializer if t.name == first.input[1])
    assert weight.dims[0] == 8
    y = session(proto).run(["y"], {"x": np.ones((1, 3, 48, 48), np.float32)})[0]
    assert y.shape == output_shape(name, 48) and np.all(np.isfinite(y))


def test_benchmark_variant_is_resnet18_sized():
    proto = build("resnet-basic", size=224, width=64)
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer
                 if not t.name.endswith((".mean", ".var")))
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 20  # ResNet-18: stem + 16 block convs + 3 projections
    assert 11.0e6 < params < 11.3e6  # torchvision ResNet-18 minus its 1000-class head
    y = session(proto).run(["y"], {"x": zoo_inputs(1, size=224)[0]["x"]})[0]
    assert np.all(np.isfinite(y)) and np.abs(y).max() < 50


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": "alexnet"}, "unknown zoo model"),
    ({"name": "vgg", "width": 3}, "width"),
    ({"name": "vgg", "size": 4}, "size"),
])
def test_bad_arguments_are_refused(kwargs, fragment):
    with pytest.raises(SlimccError, match=fragment):
        build(**kwargs)
