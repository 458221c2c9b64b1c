"""Seeded builders for small CNNs that exercise every pass (the test model zoo).

Each builder returns a valid ONNX model (an `onnx.ModelProto`, opset 17, IR 8) with one input `x`
(float32, static [1, 3, size, size]) and one output `y`: class scores [1, num_classes], except
for `crnn`, a text-line recognizer whose `y` is per-column CTC label probabilities
[size/4, 1, num_classes + 1].
Every conv is followed by an *unfolded* BatchNormalization (random gamma/beta; running
mean/var measured on a seeded input and perturbed, as in a trained net) and an activation,
so canonicalization always has work to do. Weights use He-style scaling; with the measured
BN statistics activations stay O(1) at any depth. The same seed always gives the same bytes.

`width` scales the channel counts; `size >= 128` switches to an ImageNet-style stem and
deeper stages, e.g. `build("resnet-basic", size=224, width=64)` is ResNet-18-shaped.

The protobuf messages themselves are made by `slimcc.ir.protobuild`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from slimcc.errors import SlimccError
from slimcc.ir.protobuild import (OnnxModel, OnnxNode, OnnxTensor, make_float_model, make_initializer, make_node,
                                  probe_float_tensors, set_initializers)

OPSET = 17
IR_VERSION = 8
LARGE_SIZE = 128  # from this input size on, builders use an ImageNet-style stem and depth


@dataclass(frozen=True)
class T:
    """A tensor under construction: its name and static channel/height/width."""

    name: str
    c: int
    h: int
    w: int


class _Net:
    """Collects nodes and initializers; every helper draws weights from one seeded RNG."""

    def __init__(self, seed: int, size: int):
        if size < 8:
            raise SlimccError(f"zoo models need size >= 8, got {size}")
        self.rng = np.random.default_rng(seed)
        self.nodes: list[OnnxNode] = []
        self.inits: list[OnnxTensor] = []
        self.batchnorms: list[tuple[str, list[str], float]] = []  # (node name, inputs, epsilon)
        self.names: set[str] = set()
        self.input = T("x", 3, size, size)

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.unique(base)
        self.inits.append(make_initializer(name, array))
        return name

    def node(self, op: str, inputs: list[str], base: str, n_out: int = 1, out: str | None = None,
             **attrs) -> list[str]:
        node_name = self.unique(base)
        outs = [out] if out is not None else [f"{node_name}_out{i}" if n_out > 1 else f"{node_name}_out"
                                              for i in range(n_out)]
        self.names.update(outs)
        self.nodes.append(make_node(op, inputs, outs, node_name, **attrs))
        if op == "BatchNormalization":
            self.batchnorms.append((node_name, list(inputs), attrs.get("epsilon", 1e-5)))
        return outs

    # --- layers -----------------------------------------------------------------------------
    def conv(self, x: T, cout: int, k: int, name: str, stride: int = 1, group: int = 1,
             bias: bool = False) -> T:
        if x.c % group or cout % group:
            raise SlimccError(f"{name}: channels {x.c}->{cout} not divisible by group {group}")
        fan_in = (x.c // group) * k * k
        w = self.rng.normal(0.0, math.sqrt(2.0 / fan_in), (cout, x.c // group, k, k)).astype(np.float32)
        inputs = [x.name, self.const(f"{name}.weight", w)]
        if bias:
            inputs.append(self.const(f"{name}.bias", self.rng.normal(0.0, 0.1, cout).astype(np.float32)))
        pad = k // 2
        (out,) = self.node("Conv", inputs, name, kernel_shape=[k, k], strides=[stride, stride],
                           pads=[pad] * 4, group=group, dilations=[1, 1])
        size = lambda d: (d + 2 * pad - k) // stride + 1  # noqa: E731
        return T(out, cout, size(x.h), size(x.w))

    def bn(self, x: T, name: str, gamma_scale: float = 1.0) -> T:
        c = x.c
        gamma = (self.rng.uniform(0.5, 1.5, c) * gamma_scale).astype(np.float32)
        beta = self.rng.normal(0.0, 0.1, c).astype(np.float32)
        # placeholders: `finish` replaces them with the statistics the data really has, perturbed
        mean = np.zeros(c, np.float32)
        var = np.ones(c, np.float32)
        inputs = [x.name] + [self.const(f"{name}.{p}", v) for p, v in
                             (("scale", gamma), ("bias", beta), ("mean", mean), ("var", var))]
        (out,) = self.node("BatchNormalization", inputs, name, epsilon=1e-5, momentum=0.9)
        return T(out, x.c, x.h, x.w)

    def act(self, x: T, kind: str, name: str) -> T:
        if kind == "none":
            return x
        if kind == "relu":
            (out,) = self.node("Relu", [x.name], f"{name}.relu")
        elif kind == "relu6":
            lo = self.const(f"{name}.clip_min", np.array(0.0, np.float32))
            hi = self.const(f"{name}.clip_max", np.array(6.0, np.float32))
            (out,) = self.node("Clip", [x.name, lo, hi], f"{name}.relu6")
        elif kind == "silu":
            (sig,) = self.node("Sigmoid", [x.name], f"{name}.sigmoid")
            (out,) = self.node("Mul", [x.name, sig], f"{name}.silu")
        elif kind == "hardswish":
            (out,) = self.node("HardSwish", [x.name], f"{name}.hardswish")
        else:
            raise SlimccError(f"unknown activation {kind!r}")
        return T(out, x.c, x.h, x.w)

    def cba(self, x: T, cout: int, k: int, name: str, stride: int = 1, group: int = 1,
            act: str = "relu", bias: bool = False, gamma_scale: float = 1.0) -> T:
        """Conv -> BatchNormalization -> activation."""
        y = self.conv(x, cout, k, f"{name}.conv", stride=stride, group=group, bias=bias)
        y = self.bn(y, f"{name}.bn", gamma_scale=gamma_scale)
        return self.act(y, act, name)

    def maxpool(self, x: T, name: str, k: int = 2, stride: int = 2, pad: int = 0) -> T:
        (out,) = self.node("MaxPool", [x.name], name, kernel_shape=[k, k], strides=[stride, stride],
                           pads=[pad] * 4)
        size = lambda d: (d + 2 * pad - k) // stride + 1  # noqa: E731
        return T(out, x.c, size(x.h), size(x.w))

    def add(self, a: T, b: T, name: str) -> T:
        if (a.c, a.h, a.w) != (b.c, b.h, b.w):
            raise SlimccError(f"{name}: residual shapes differ {a} vs {b}")
        (out,) = self.node("Add", [a.name, b.name], name)
        return T(out, a.c, a.h, a.w)

    def concat(self, parts: list[T], name: str) -> T:
        (out,) = self.node("Concat", [p.name for p in parts], name, axis=1)
        return T(out, sum(p.c for p in parts), parts[0].h, parts[0].w)

    def split(self, x: T, sizes: list[int], name: str) -> list[T]:
        split = self.const(f"{name}.split", np.array(sizes, np.int64))
        outs = self.node("Split", [x.name, split], name, n_out=len(sizes), axis=1)
        return [T(o, c, x.h, x.w) for o, c in zip(outs, sizes)]

    def channel_shuffle(self, x: T, groups: int, name: str) -> T:
        """Reshape [1,g,C/g,H,W] -> Transpose(0,2,1,3,4) -> Reshape [1,C,H,W] (ShuffleNet)."""
        s1 = self.const(f"{name}.shape1", np.array([1, groups, x.c // groups, x.h, x.w], np.int64))
        s2 = self.const(f"{name}.shape2", np.array([1, x.c, x.h, x.w], np.int64))
        (r,) = self.node("Reshape", [x.name, s1], f"{name}.reshape1")
        (t,) = self.node("Transpose", [r], f"{name}.transpose", perm=[0, 2, 1, 3, 4])
        (out,) = self.node("Reshape", [t, s2], f"{name}.reshape2")
        return T(out, x.c, x.h, x.w)

    def flatten(self, x: T, name: str) -> T:
        (out,) = self.node("Flatten", [x.name], name, axis=1)
        return T(out, x.c * x.h * x.w, 1, 1)

    def gap_flatten(self, x: T, name: str) -> T:
        (g,) = self.node("GlobalAveragePool", [x.name], f"{name}.gap")
        return self.flatten(T(g, x.c, 1, 1), f"{name}.flatten")

    def gemm(self, x: T, nout: int, name: str, out: str | None = None) -> T:
        """Fully connected layer, PyTorch layout (weight [out, in], transB=1)."""
        w = self.rng.normal(0.0, math.sqrt(2.0 / x.c), (nout, x.c)).astype(np.float32)
        b = self.rng.normal(0.0, 0.1, nout).astype(np.float32)
        (o,) = self.node("Gemm", [x.name, self.const(f"{name}.weight", w), self.const(f"{name}.bias", b)],
                         name, out=out, transB=1, alpha=1.0, beta=1.0)
        return T(o, nout, 1, 1)

    def relu(self, x: T, name: str) -> T:
        return self.act(x, "relu", name)

    def finish(self, y: T, graph_name: str, shape: list[int] | None = None) -> OnnxModel:
        """The model with input x and output y ([1, y.c] class scores unless `shape` says otherwise)."""
        if y.name != "y":
            raise AssertionError("the last layer must write the output tensor 'y'")
        dims = [1, 3, self.input.h, self.input.w]
        model = make_float_model(self.nodes, self.inits, graph_name, {"x": dims}, {"y": shape or [1, y.c]},
                                 opset=OPSET, ir_version=IR_VERSION, producer="slimcc.models.zoo")
        self._calibrate_batchnorm(model, dims)
        return model

    def _calibrate_batchnorm(self, model: OnnxModel, dims: list[int]) -> None:
        """Give every BatchNormalization the running statistics a trained network would have.

        Random weights with made-up statistics let activations drift by orders of magnitude in deep
        nets. Instead each BN gets the per-channel mean/variance of its real input on a seeded
        unit-normal sample, perturbed by a few percent (so folding still has non-trivial work).
        One onnxruntime run of a probe in which every BN normalizes with the sample's own statistics
        (InstanceNormalization, identical to training-mode BN at batch 1) measures all BN inputs at once.
        """
        if not self.batchnorms:
            return
        swap = {name: ("InstanceNormalization", inputs[:3], {"epsilon": epsilon})
                for name, inputs, epsilon in self.batchnorms}
        sample = {"x": self.rng.standard_normal(dims).astype(np.float32)}
        acts = probe_float_tensors(model, [inputs[0] for _, inputs, _ in self.batchnorms], sample, swap)
        statistics = {}
        for (_, inputs, _), act in zip(self.batchnorms, acts):
            act = act.astype(np.float64)
            mean, var = act.mean(axis=(0, 2, 3)), act.var(axis=(0, 2, 3))
            var = np.maximum(var, max(1e-4, 5e-2 * float(var.mean())))
            mean = mean + self.rng.normal(0.0, 0.05, mean.shape) * np.sqrt(var)
            var = var * self.rng.uniform(0.8, 1.25, var.shape)
            for slot, values in ((3, mean), (4, var)):
                # float16 rounding keeps the bytes identical despite last-bit differences between CPUs
                statistics[inputs[slot]] = values.astype(np.float16).astype(np.float32)
        set_initializers(model, statistics)

def _ch(width: int, mult: float, divisor: int = 1) -> int:
    """Channel count `width * mult`, rounded to a positive multiple of `divisor`."""
    return max(divisor, int(round(width * mult / divisor)) * divisor)


def _stem(net: _Net, x: T, cout: int, large: bool, act: str = "relu") -> T:
    """3x3 stride-1 stem for small inputs; 7x7/2 conv + 3x3/2 max-pool for ImageNet-sized ones."""
    if large:
        y = net.cba(x, cout, 7, "stem", stride=2, act=act)
        return net.maxpool(y, "stem.pool", k=3, stride=2, pad=1)
    return net.cba(x, cout, 3, "stem", act=act)


# --- networks --------------------------------------------------------------------------------

def build_vgg(seed: int = 0, size: int = 32, width: int = 16, num_classes: int = 10) -> OnnxModel:
    """VGG-style: (conv-bn-relu x2 + MaxPool) stages until <= 7 pixels, Flatten -> Gemm -> Gemm."""
    net = _Net(seed, size)
    x = net.input
    stage = 0
    while x.h > 7 and stage < 5:
        c = width * min(2 ** stage, 8)
        for i in range(1 if stage == 0 else 2):
            x = net.cba(x, c, 3, f"stage{stage}.conv{i}", bias=True)
        x = net.maxpool(x, f"stage{stage}.pool")
        stage += 1
    x = net.flatten(x, "head.flatten")
    x = net.relu(net.gemm(x, 4 * width, "head.fc1"), "head.fc1")
    return net.finish(net.gemm(x, num_classes, "head.fc2", out="y"), "vgg")


def _basic_block(net: _Net, x: T, cout: int, stride: int, name: str) -> T:
    y = net.cba(x, cout, 3, f"{name}.conv1", stride=stride)
    y = net.cba(y, cout, 3, f"{name}.conv2", act="none", gamma_scale=0.5)
    shortcut = x
    if stride != 1 or x.c != cout:
        shortcut = net.cba(x, cout, 1, f"{name}.downsample", stride=stride, act="none")
    return net.relu(net.add(y, shortcut, f"{name}.add"), f"{name}.out")


def _bottleneck_block(net: _Net, x: T, mid: int, stride: int, name: str) -> T:
    cout = 4 * mid
    y = net.cba(x, mid, 1, f"{name}.conv1")
    y = net.cba(y, mid, 3, f"{name}.conv2", stride=stride)
    y = net.cba(y, cout, 1, f"{name}.conv3", act="none", gamma_scale=0.5)
    shortcut = x
    if stride != 1 or x.c != cout:
        shortcut = net.cba(x, cout, 1, f"{name}.downsample", stride=stride, act="none")
    return net.relu(net.add(y, shortcut, f"{name}.add"), f"{name}.out")


def build_resnet_basic(seed: int = 0, size: int = 32, width: int = 16, num_classes: int = 10) -> OnnxModel:
    """ResNet with basic blocks: 3 stages x 1 block when small; ResNet-18 layout (4 x 2) when large."""
    large = size >= LARGE_SIZE
    net = _Net(seed, size)
    x = _stem(net, net.input, width, large)
    stages, blocks = (4, 2) if large else (3, 1)
    for s in range(stages):
        for b in range(blocks):
            x = _basic_block(net, x, width * 2 ** s, 2 if (s > 0 and b == 0) else 1, f"layer{s + 1}.{b}")
    x = net.gap_flatten(x, "head")
    return net.finish(net.gemm(x, num_classes, "head.fc", out="y"), "resnet-basic")


def build_resnet_bottleneck(seed: int = 0, size: int = 32, width: int = 16,
                            num_classes: int = 10) -> OnnxModel:
    """ResNet with bottleneck blocks (1x1 reduce, 3x3, 1x1 expand x4); projections on every stage entry."""
    large = size >= LARGE_SIZE
    net = _Net(seed, size)
    x = _stem(net, net.input, width, large)
    layout = (3, 4, 6, 3) if large else (1, 1, 1)
    base = width if large else max(1, width // 2)
    for s, blocks in enumerate(layout):
        for b in range(blocks):
            x = _bottleneck_block(net, x, base * 2 ** s, 2 if (s > 0 and b == 0) else 1, f"layer{s + 1}.{b}")
    x = net.gap_flatten(x, "head")
    return net.finish(net.gemm(x, num_classes, "head.fc", out="y"), "resnet-bottleneck")


def _inverted_residual(net: _Net, x: T, cout: int, stride: int, expand: int, name: str) -> T:
    hidden = x.c * expand
    y = x
    if expand != 1:
        y = net.cba(y, hidden, 1, f"{name}.expand", act="relu6")
    y = net.cba(y, hidden, 3, f"{name}.dw", stride=stride, group=hidden, act="relu6")
    y = net.cba(y, cout, 1, f"{name}.project", act="none", gamma_scale=0.5)
    if stride == 1 and x.c == cout:
        y = net.add(y, x, f"{name}.add")
    return y


def build_mobilenetv2(seed: int = 0, size: int = 32, width: int = 16, num_classes: int = 10) -> OnnxModel:
    """MobileNetV2: inverted residuals (1x1 expand, depthwise 3x3, 1x1 project, Add), ReLU6 as Clip."""
    large = size >= LARGE_SIZE
    net = _Net(seed, size)
    x = net.cba(net.input, width, 3, "stem", stride=2 if large else 1, act="relu6")
    if large:  # (expand, out-channel multiplier of width/32 * 32-channel MobileNetV2, repeats, stride)
        cfg = [(1, 0.5, 1, 1), (6, 0.75, 2, 2), (6, 1, 3, 2), (6, 2, 4, 2), (6, 3, 3, 1), (6, 5, 3, 2), (6, 10, 1, 1)]
    else:
        cfg = [(1, 1, 1, 1), (6, 1.5, 2, 2), (6, 2, 2, 2)]
    for i, (t, mult, n, s) in enumerate(cfg):
        cout = _ch(width, mult, 2)
        for j in range(n):
            x = _inverted_residual(net, x, cout, s if j == 0 else 1, t, f"block{i}.{j}")
    x = net.cba(x, 4 * width if not large else 40 * width, 1, "head.conv", act="relu6")
    x = net.gap_flatten(x, "head")
    return net.finish(net.gemm(x, num_classes, "head.fc", out="y"), "mobilenetv2")


def _squeeze_excite(net: _Net, x: T, name: str) -> T:
    """Squeeze-excitation: GlobalAveragePool -> 1x1 conv (C/4) -> ReLU -> 1x1 conv -> HardSigmoid, scaling x."""
    (pooled,) = net.node("GlobalAveragePool", [x.name], f"{name}.gap")
    s = net.conv(T(pooled, x.c, 1, 1), max(x.c // 4, 2), 1, f"{name}.reduce", bias=True)
    s = net.relu(s, f"{name}.reduce")
    s = net.conv(s, x.c, 1, f"{name}.expand", bias=True)
    (gate,) = net.node("HardSigmoid", [s.name], f"{name}.gate", alpha=1.0 / 6.0, beta=0.5)
    (out,) = net.node("Mul", [x.name, gate], f"{name}.scale")
    return T(out, x.c, x.h, x.w)


def _se_inverted_residual(net: _Net, x: T, hidden: int, cout: int, k: int, stride: int, name: str) -> T:
    """MobileNetV3 block: 1x1 expand (HardSwish), KxK depthwise (HardSwish), squeeze-excitation, 1x1 project, Add."""
    y = net.cba(x, hidden, 1, f"{name}.expand", act="hardswish")
    y = net.cba(y, hidden, k, f"{name}.dw", stride=stride, group=hidden, act="hardswish")
    y = _squeeze_excite(net, y, f"{name}.se")
    y = net.cba(y, cout, 1, f"{name}.project", act="none", gamma_scale=0.5)
    return net.add(y, x, f"{name}.add") if stride == 1 and x.c == cout else y


def build_mobilenetv3(seed: int = 0, size: int = 32, width: int = 16, num_classes: int = 10) -> OnnxModel:
    """MobileNetV3-like (as in PP-OCR's direction classifier and PP-LCNet): HardSwish, 5x5 depthwise convs and
    squeeze-excitation blocks (GlobalAveragePool -> conv -> ReLU -> conv -> HardSigmoid -> Mul), then a pooled head."""
    large = size >= LARGE_SIZE
    net = _Net(seed, size)
    x = net.cba(net.input, width, 3, "stem", stride=2, act="hardswish")
    # (expansion multiplier, out-channel multiplier of width, kernel, stride)
    cfg = [(4, 1.5, 3, 2), (3, 1.5, 3, 1), (4, 2.5, 5, 2), (3, 2.5, 5, 1)]
    if large:
        cfg += [(3, 5, 5, 2), (3, 5, 5, 1)]
    for i, (expand, mult, k, stride) in enumerate(cfg):
        x = _se_inverted_residual(net, x, x.c * expand, _ch(width, mult, 2), k, stride, f"block{i}")
    x = net.cba(x, 6 * width, 1, "head.conv", act="hardswish")
    x = net.gap_flatten(x, "head")
    return net.finish(net.gemm(x, num_classes, "head.fc", out="y"), "mobilenetv3")


def _c2f(net: _Net, x: T, cout: int, n: int, shortcut: bool, name: str) -> T:
    """YOLOv8 C2f: 1x1 conv -> Split in halves -> n bottlenecks on the last part -> Concat -> 1x1 conv."""
    c = cout // 2
    y = net.cba(x, 2 * c, 1, f"{name}.cv1", act="silu")
    parts = net.split(y, [c, c], f"{name}.split")
    for i in range(n):
        b = net.cba(parts[-1], c, 3, f"{name}.m{i}.cv1", act="silu")
        b = net.cba(b, c, 3, f"{name}.m{i}.cv2", act="silu", gamma_scale=0.5)
        if shortcut:
            b = net.add(parts[-1], b, f"{name}.m{i}.add")
        parts.append(b)
    y = net.concat(parts, f"{name}.concat")
    return net.cba(y, cout, 1, f"{name}.cv2", act="silu")


def build_c2f(seed: int = 0, size: int = 32, width: int = 16, num_classes: int = 10) -> OnnxModel:
    """YOLOv8-cls-like: strided conv + C2f stages down to 4x4 maps, SiLU as Mul(x, Sigmoid(x)),
    then 1x1 conv + GAP + Gemm."""
    net = _Net(seed, size)
    x = net.cba(net.input, width, 3, "stem", stride=2, act="silu")
    stages = [(2, 1, True), (4, 2, True), (8, 1, False), (16, 1, False)]
    for s, (mult, n, shortcut) in enumerate(stages):
        if x.h // 2 < 4:  # keep >= 4x4 maps so every BN sees meaningful statistics
            break
        x = net.cba(x, width * mult, 3, f"stage{s}.down", stride=2, act="silu")
        x = _c2f(net, x, width * mult, n, shortcut, f"stage{s}.c2f")
    x = net.cba(x, 2 * x.c, 1, "head.conv", act="silu")
    x = net.gap_flatten(x, "head")
    return net.finish(net.gemm(x, num_classes, "head.fc", out="y"), "c2f")


def _shuffle_unit(net: _Net, x: T, cout: int, stride: int, name: str) -> T:
    """ShuffleNetV2 unit: split (stride 1) or two-branch downsample (stride 2), concat, shuffle."""
    half = cout // 2
    if stride == 1:
        left, right = net.split(x, [x.c // 2, x.c - x.c // 2], f"{name}.split")
    else:
        left = net.cba(x, x.c, 3, f"{name}.branch1.dw", stride=2, group=x.c, act="none")
        left = net.cba(left, half, 1, f"{name}.branch1.pw", act="relu")
        right = x
    r = net.cba(right, half, 1, f"{name}.branch2.pw1")
    r = net.cba(r, half, 3, f"{name}.branch2.dw", stride=stride, group=half, act="none")
    r = net.cba(r, half, 1, f"{name}.branch2.pw2")
    return net.channel_shuffle(net.concat([left, r], f"{name}.concat"), 2, f"{name}.shuffle")


def build_shufflenet(seed: int = 0, size: int = 32, width: int = 16, num_classes: int = 10) -> OnnxModel:
    """ShuffleNetV2-like: downsample + basic units with channel split/concat and Reshape-Transpose-Reshape shuffle."""
    large = size >= LARGE_SIZE
    net = _Net(seed, size)
    x = _stem(net, net.input, width, large)
    layout = [(2, 4), (4, 8), (8, 4)] if large else [(2, 2), (4, 2)]
    for s, (mult, units) in enumerate(layout):
        for u in range(units):
            x = _shuffle_unit(net, x, _ch(width, mult, 2), 2 if u == 0 else 1, f"stage{s}.{u}")
    x = net.cba(x, 8 * width, 1, "head.conv")
    x = net.gap_flatten(x, "head")
    return net.finish(net.gemm(x, num_classes, "head.fc", out="y"), "shufflenet")


def _shuffle_v1_unit(net: _Net, x: T, cout: int, groups: int, stride: int, name: str) -> T:
    """ShuffleNetV1 unit: grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1, then residual Add
    (stride 1) or Concat with a 3x3/2 average-pooled shortcut (stride 2)."""
    mid = cout // 4
    branch = cout - x.c if stride == 2 else cout
    r = net.cba(x, mid, 1, f"{name}.gconv1", group=groups)
    r = net.channel_shuffle(r, groups, f"{name}.shuffle")
    r = net.cba(r, mid, 3, f"{name}.dw", stride=stride, group=mid, act="none")
    r = net.cba(r, branch, 1, f"{name}.gconv2", group=groups, act="none")
    if stride == 1:
        return net.relu(net.add(x, r, f"{name}.add"), f"{name}.out")
    (pooled,) = net.node("AveragePool", [x.name], f"{name}.shortcut", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], count_include_pad=0)
    return net.relu(net.concat([T(pooled, x.c, r.h, r.w), r], f"{name}.concat"), f"{name}.out")


def build_shufflenet_v1(seed: int = 0, size: int = 32, width: int = 16, num_classes: int = 10,
                        groups: int = 2) -> OnnxModel:
    """ShuffleNetV1-like: grouped 1x1 convs, Reshape-Transpose-Reshape shuffle, depthwise convs,
    residual Add and Concat downsampling. The first stage's bottleneck has an odd number of
    channels per group (as in the g=2 original: 25), so a shuffle maps group positions across
    the next conv's group boundaries. `width` must be a multiple of `groups`."""
    if width % groups:
        raise SlimccError(f"shufflenet-v1: width {width} is not a multiple of groups {groups}")
    large = size >= LARGE_SIZE
    net = _Net(seed, size)
    per_group = (width // 2) | 1
    x = _stem(net, net.input, width, large)
    layout = [4, 8, 4] if large else [2, 2]
    for s, units in enumerate(layout):
        for u in range(units):
            x = _shuffle_v1_unit(net, x, 4 * groups * per_group * 2 ** s, groups, 2 if u == 0 else 1,
                                 f"stage{s}.{u}")
    x = net.gap_flatten(x, "head")
    return net.finish(net.gemm(x, num_classes, "head.fc", out="y"), "shufflenet-v1")


def build_conv_gemm(seed: int = 0, size: int = 32, width: int = 16, num_classes: int = 10) -> OnnxModel:
    """Conv-bn-relu x2 (second strided), max-pools down to <= 8 pixels, Flatten -> Gemm -> Relu -> Gemm."""
    net = _Net(seed, size)
    x = net.cba(net.input, width, 3, "conv1")
    x = net.cba(x, 2 * width, 3, "conv2", stride=2)
    i = 0
    while x.h > 8:
        x = net.maxpool(x, f"pool{i}")
        i += 1
    x = net.flatten(x, "flatten")
    x = net.relu(net.gemm(x, 2 * width, "fc1"), "fc1")
    return net.finish(net.gemm(x, num_classes, "fc2", out="y"), "conv-gemm")


def _bilstm(net: _Net, seq: str, steps: int, cin: int, hidden: int, name: str) -> str:
    """Bidirectional LSTM over a time-major [T, 1, cin] sequence, PyTorch's uniform(+-1/sqrt(H)) weights;
    returns both directions' hidden states side by side, [T, 1, 2 * hidden] (as PyTorch exports it)."""
    bound = 1.0 / math.sqrt(hidden)
    w, r, b = (net.const(f"{name}.{p}", net.rng.uniform(-bound, bound, shape).astype(np.float32))
               for p, shape in (("W", (2, 4 * hidden, cin)), ("R", (2, 4 * hidden, hidden)), ("B", (2, 8 * hidden))))
    (y,) = net.node("LSTM", [seq, w, r, b], name, hidden_size=hidden, direction="bidirectional")  # [T, 2, 1, H]
    (y,) = net.node("Transpose", [y], f"{name}.time_batch_first", perm=[0, 2, 1, 3])
    shape = net.const(f"{name}.shape", np.array([steps, 1, 2 * hidden], np.int64))
    (y,) = net.node("Reshape", [y, shape], f"{name}.concat_directions")
    return y


def build_crnn(seed: int = 0, size: int = 32, width: int = 16, num_classes: int = 10) -> OnnxModel:
    """CRNN text recognizer: conv-bn-relu stages and max-pools, the height max-pooled to 1, the width read
    as T = size/4 time steps by a bidirectional LSTM (hidden 2*width), then a linear CTC head with a
    softmax over num_classes + 1 labels (the last is the blank): y is [T, 1, num_classes + 1]."""
    net = _Net(seed, size)
    x = net.maxpool(net.cba(net.input, width, 3, "conv1"), "pool1")
    x = net.maxpool(net.cba(x, 2 * width, 3, "conv2"), "pool2")
    x = net.cba(x, 4 * width, 3, "conv3")
    (col,) = net.node("MaxPool", [x.name], "pool_height", kernel_shape=[x.h, 1], strides=[x.h, 1])  # [1, C, 1, T]
    (seq,) = net.node("Squeeze", [col, net.const("squeeze.axes", np.array([2], np.int64))], "squeeze")
    (seq,) = net.node("Transpose", [seq], "time_major", perm=[2, 0, 1])  # [T, 1, C]
    hidden, labels = 2 * width, num_classes + 1
    features = _bilstm(net, seq, x.w, x.c, hidden, "lstm")
    w = net.rng.normal(0.0, math.sqrt(1.0 / (2 * hidden)), (2 * hidden, labels)).astype(np.float32)
    (logits,) = net.node("MatMul", [features, net.const("head.weight", w)], "head.matmul")
    bias = net.const("head.bias", net.rng.normal(0.0, 0.1, labels).astype(np.float32))
    (logits,) = net.node("Add", [logits, bias], "head.bias_add")
    (y,) = net.node("Softmax", [logits], "head.softmax", out="y", axis=-1)
    return net.finish(T(y, labels, 1, x.w), "crnn", shape=[x.w, 1, labels])


def _linear(net: _Net, x: str, cin: int, cout: int, name: str) -> str:
    """MatMul over the last axis with a [cin, cout] weight, then its bias Add (as PyTorch exports nn.Linear)."""
    w = net.rng.normal(0.0, math.sqrt(1.0 / cin), (cin, cout)).astype(np.float32)
    (y,) = net.node("MatMul", [x, net.const(f"{name}.weight", w)], f"{name}.matmul")
    bias = net.const(f"{name}.bias", net.rng.normal(0.0, 0.1, cout).astype(np.float32))
    (y,) = net.node("Add", [y, bias], f"{name}.bias_add")
    return y


def _layer_norm(net: _Net, x: str, channels: int, name: str) -> str:
    """LayerNormalization over the last axis with a random affine (gamma around 1, small beta)."""
    gamma = net.const(f"{name}.scale", net.rng.uniform(0.8, 1.2, channels).astype(np.float32))
    beta = net.const(f"{name}.bias", net.rng.normal(0.0, 0.05, channels).astype(np.float32))
    (y,) = net.node("LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=1e-5)
    return y


def _attention(net: _Net, x: str, steps: int, channels: int, heads: int, name: str) -> str:
    """Multi-head self-attention over [1, T, C]: Q/K/V projections, per-head scaled Softmax(Q K^T) V,
    heads merged back to [1, T, C] and an output projection."""
    dim = channels // heads
    split = net.const(f"{name}.split_heads", np.array([1, steps, heads, dim], np.int64))
    merge = net.const(f"{name}.merge_heads", np.array([1, steps, channels], np.int64))

    def per_head(role: str, perm: list[int]) -> str:
        y = _linear(net, x, channels, channels, f"{name}.{role}")
        (y,) = net.node("Reshape", [y, split], f"{name}.{role}.split")
        (y,) = net.node("Transpose", [y], f"{name}.{role}.heads_first", perm=perm)
        return y

    q = per_head("q", [0, 2, 1, 3])  # [1, H, T, D]
    k = per_head("k", [0, 2, 3, 1])  # [1, H, D, T]
    v = per_head("v", [0, 2, 1, 3])
    (scores,) = net.node("MatMul", [q, k], f"{name}.scores")
    scale = net.const(f"{name}.scale", np.array(1.0 / math.sqrt(dim), np.float32))
    (scores,) = net.node("Mul", [scores, scale], f"{name}.scaled")
    (weights,) = net.node("Softmax", [scores], f"{name}.softmax", axis=-1)
    (y,) = net.node("MatMul", [weights, v], f"{name}.context")
    (y,) = net.node("Transpose", [y], f"{name}.time_first", perm=[0, 2, 1, 3])
    (y,) = net.node("Reshape", [y, merge], f"{name}.merge")
    return _linear(net, y, channels, channels, f"{name}.out")


def _transformer_block(net: _Net, x: str, steps: int, channels: int, heads: int, name: str) -> str:
    """Pre-norm transformer block: x + attention(LN(x)), then + MLP(LN(.)) with a 2x ReLU hidden layer."""
    y = _attention(net, _layer_norm(net, x, channels, f"{name}.ln1"), steps, channels, heads, f"{name}.attn")
    (x,) = net.node("Add", [x, y], f"{name}.residual1")
    y = _linear(net, _layer_norm(net, x, channels, f"{name}.ln2"), channels, 2 * channels, f"{name}.mlp.fc1")
    (y,) = net.node("Relu", [y], f"{name}.mlp.relu")
    y = _linear(net, y, 2 * channels, channels, f"{name}.mlp.fc2")
    (x,) = net.node("Add", [x, y], f"{name}.residual2")
    return x


def build_attn_ctc(seed: int = 0, size: int = 32, width: int = 16, num_classes: int = 10) -> OnnxModel:
    """Attention text recognizer (SVTR-like): conv-bn-relu stages and max-pools, the height max-pooled to 1 and a
    1x1 conv-bn embedding, the columns read batch-first as [1, T = size/4, C = 2*width] by two pre-norm transformer blocks
    (2-head self-attention, ReLU MLP, LayerNormalization), a final LayerNormalization and a linear CTC head
    (MatMul + bias Add) with a softmax over num_classes + 1 labels (the last is the blank):
    y is [1, T, num_classes + 1]."""
    net = _Net(seed, size)
    x = net.maxpool(net.cba(net.input, width, 3, "conv1"), "pool1")
    x = net.maxpool(net.cba(x, 2 * width, 3, "conv2"), "pool2")
    (col,) = net.node("MaxPool", [x.name], "pool_height", kernel_shape=[x.h, 1], strides=[x.h, 1])  # [1, C, 1, T]
    col = net.cba(T(col, x.c, 1, x.w), x.c, 1, "embed", act="none")  # zero-mean column features (measured BN)
    (seq,) = net.node("Squeeze", [col.name, net.const("squeeze.axes", np.array([2], np.int64))], "squeeze")
    (seq,) = net.node("Transpose", [seq], "batch_time_channel", perm=[0, 2, 1])  # [1, T, C]
    steps, channels, labels = col.w, col.c, num_classes + 1
    for b in range(2):
        seq = _transformer_block(net, seq, steps, channels, 2, f"block{b}")
    logits = _linear(net, _layer_norm(net, seq, channels, "head.ln"), channels, labels, "head")
    (y,) = net.node("Softmax", [logits], "head.softmax", out="y", axis=-1)
    return net.finish(T(y, labels, 1, steps), "attn-ctc", shape=[1, steps, labels])


def build_deep_resnet(seed: int = 0, size: int = 32, width: int = 16, num_classes: int = 10,
                      blocks: int = 64) -> OnnxModel:
    """A long residual chain for scaling tests: a stem, then `blocks` basic blocks at one width and
    resolution (7 nodes each: conv-bn-relu, conv-bn, Add, ReLU), global pooling and a Gemm.
    Every block costs the same, so work per node should not grow with depth."""
    if blocks < 1:
        raise SlimccError(f"blocks must be >= 1, got {blocks}")
    net = _Net(seed, size)
    x = _stem(net, net.input, width, large=False)
    for b in range(blocks):
        x = _basic_block(net, x, width, 1, f"chain.{b}")
    x = net.gap_flatten(x, "head")
    return net.finish(net.gemm(x, num_classes, "head.fc", out="y"), "deep-resnet")


def build_vgg19(seed: int = 0, size: int = 224, num_classes: int = 1000) -> OnnxModel:
    """VGG-19 at ImageNet scale (143.7M parameters, 575 MB of float32 weights at size 224): 16 3x3
    convs with bias and ReLU in 5 max-pooled stages, then 4096-4096-classes fully connected layers.
    Random weights (He-normal): a large model for scaling benchmarks, not for accuracy."""
    net = _Net(seed, size)
    x = net.input
    for stage, (channels, convs) in enumerate(((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))):
        for i in range(convs):
            name = f"features.{stage}.{i}"
            x = net.relu(net.conv(x, channels, 3, name, bias=True), name)
        x = net.maxpool(x, f"features.{stage}.pool")
    x = net.flatten(x, "classifier.flatten")
    x = net.relu(net.gemm(x, 4096, "classifier.fc1"), "classifier.fc1")
    x = net.relu(net.gemm(x, 4096, "classifier.fc2"), "classifier.fc2")
    return net.finish(net.gemm(x, num_classes, "classifier.fc3", out="y"), "vgg19")

ZOO: dict[str, Callable[..., OnnxModel]] = {
    "vgg": build_vgg,
    "resnet-basic": build_resnet_basic,
    "resnet-bottleneck": build_resnet_bottleneck,
    "mobilenetv2": build_mobilenetv2,
    "mobilenetv3": build_mobilenetv3,
    "c2f": build_c2f,
    "shufflenet": build_shufflenet,
    "shufflenet-v1": build_shufflenet_v1,
    "conv-gemm": build_conv_gemm,
    "crnn": build_crnn,
    "attn-ctc": build_attn_ctc,
}


def build(name: str, seed: int = 0, size: int = 32, width: int = 16, num_classes: int = 10) -> OnnxModel:
    """Build zoo model `name` with weights drawn from `seed` (input x: [1,3,size,size], output y)."""
    if name not in ZOO:
        raise SlimccError(f"unknown zoo model {name!r}; choose one of: {', '.join(ZOO)}")
    if width < 2 or width % 2:
        raise SlimccError(f"width must be an even number >= 2, got {width}")
    return ZOO[name](seed=seed, size=size, width=width, num_classes=num_classes)
