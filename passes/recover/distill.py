"""The `distill` pass: block-wise distillation of the compressed model from the original (needs torch).

Teacher = ctx.reference, student = the model being compressed, both run by our ONNX->torch
mapper (every float initializer of the student is trained). Loss, as in the survey:

    L = L_task + lambda * sum_i L_TS(i),   L_TS(i) = 1/2 mean (teacher_i - student_i)^2

at block boundaries matched automatically: the outputs of single-entry/single-exit blocks of the
student (networkx dominators, `ir.graphview.block_boundaries`) present in the teacher under the same
name (pruning and decomposition keep names), spread over the depth. lambda is
chosen at the start of every epoch so the guidance loss equals the task loss and never
exceeds it. Stage 1 trains the guidance loss alone (`stage1_epochs`), then both jointly.
L_task is the cross-entropy with labels when ctx.notes["labels"] holds one label per
calibration sample (in batch order), else Hinton's KL divergence to the teacher's outputs
softened by `temperature` (times T^2). Trained weights go back into the initializers by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from slimcc.errors import PassError, PipelineError
from slimcc.ir.graphview import block_boundaries
from slimcc.ir.layout import channel_axis
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.prune.channels import BINARY_OPS, POOL_OPS, UNARY_OPS
from slimcc.passes.recover.activations import calibration_batches, reference_model
from slimcc.passes.recover.channel_map import recorded_map, weight_map
from slimcc.passes.recover.layers import find_layers
from slimcc.passes.recover.torch_mapper import TorchGraph, import_torch

MAX_BOUNDARIES = 8
CHANNELWISE_OPS = UNARY_OPS | BINARY_OPS | POOL_OPS | {"BatchNormalization"}
TEACHER_CACHE_BYTES = 1 << 30


def logits_tensor(graph) -> str:
    """The tensor holding the first output's logits: the input of a final Softmax, else the output."""
    out = graph.outputs[0]
    producer = out.inputs[0] if out.inputs else None
    if producer is not None and producer.op in ("Softmax", "LogSoftmax"):
        return producer.inputs[0].name
    return out.name


def match_boundaries(student, teacher, ctx=None) -> list[tuple[str, np.ndarray | None, int | None]]:
    """Tensors to guide, as (name, kept original channels, their axis), or (name, None, None) when unpruned.

    Candidates are the student's block boundaries (tensors every path from the inputs to the
    outputs runs through), neither the logits nor a graph output, that exist in both graphs by name
    with equal static shapes. A boundary pruned on one axis also qualifies when its original
    channels are known exactly, and is then compared with those channels of the teacher: from
    ctx.notes["channel_map"], else from the pruned conv/gemm output it carries channel for channel
    (`_pruned_source`; kept channels from the map or the sliced weights, on axis 1 for a conv, the
    last axis for a MatMul/Gemm). At most MAX_BOUNDARIES, evenly spread over depth.
    """
    teacher_shapes = {t.name: t.shape for t in teacher.graph.tensors().values() if not _is_constant(t)}
    last = logits_tensor(student.graph)
    inputs = {t.name for t in student.graph.inputs} | {t.name for t in student.graph.outputs}
    originals = {l.output.name: l for l in find_layers(teacher.graph)}
    pruned = {}
    for layer in find_layers(student.graph):
        original = originals.get(layer.output.name)
        if original is None or layer.weight_array() is None or original.weight_array() is None:
            continue
        if original.out_channels() > layer.out_channels():
            kept = recorded_map(ctx, layer.output.name, layer.out_channels(), original.out_channels())
            kept = kept if kept is not None else weight_map(layer.filters(), original.filters())
            if kept is not None:
                pruned[layer.output.name] = (kept, layer.op)
    found = []
    for t in block_boundaries(student.graph):
        if t.name in inputs or t.name == last or t.name not in teacher_shapes:
            continue
        shape, other = t.shape, teacher_shapes[t.name]
        if not (shape and other and len(shape) == len(other)
                and all(isinstance(d, int) for d in list(shape) + list(other))):
            continue
        shrunk = [i for i, (d, o) in enumerate(zip(shape, other)) if d != o]
        if not shrunk:
            found.append((t.name, None, None))
        elif len(shrunk) == 1:
            kept = recorded_map(ctx, t.name, shape[shrunk[0]], other[shrunk[0]])
            source = _pruned_source(t, pruned) if kept is None else None
            if source is not None and channel_axis(source[1], len(shape)) == shrunk[0]:
                kept = source[0]
            if kept is not None and len(kept) == shape[shrunk[0]]:
                found.append((t.name, kept, shrunk[0]))
    if len(found) <= MAX_BOUNDARIES:
        return found
    picks = np.linspace(0, len(found) - 1, MAX_BOUNDARIES).round().astype(int)
    return [found[i] for i in sorted(set(picks))]


def _pruned_source(tensor, pruned: dict[str, tuple[np.ndarray, str]]) -> tuple[np.ndarray, str] | None:
    """(kept channels, op) of the pruned layer output that `tensor` carries channel for channel, found by
    walking back through ops whose output channel k is input channel k (element-wise ops on operands
    of the output's shape, BatchNormalization, pooling); None when there is none."""
    while tensor.name not in pruned:
        node = tensor.inputs[0] if len(tensor.inputs) else None
        if node is None or node.op not in CHANNELWISE_OPS:
            return None
        if node.op in BINARY_OPS:
            tensor = next((t for t in node.inputs if not _is_constant(t) and t.shape == tensor.shape), None)
            if tensor is None:
                return None
        else:
            tensor = node.inputs[0]
    return pruned[tensor.name]


def _is_constant(tensor) -> bool:
    import onnx_graphsurgeon as gs

    return isinstance(tensor, gs.Constant)


def stack_samples(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """All calibration samples per input, concatenated along the batch axis."""
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


@register_pass("distill")
@dataclass(frozen=True)
class Distill(Pass):
    """Block-wise distillation from the original model (guidance loss first, then joint; needs torch).

    Options: epochs (total), stage1_epochs (guidance-only epochs first), lr (Adam), temperature
    (Hinton softening without labels), batch (samples per step). Labels: ctx.notes["labels"].
    """

    epochs: int = 10
    stage1_epochs: int = 2
    lr: float = 1e-3
    temperature: float = 4.0
    batch: int = 64

    exact: ClassVar[bool] = False
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self):
        if self.epochs < 1 or not 0 <= self.stage1_epochs <= self.epochs:
            raise PipelineError(f"distill: need epochs >= 1 and 0 <= stage1_epochs <= epochs "
                                f"(got {self.epochs}, {self.stage1_epochs})")
        if not 0.0 < self.lr < 1.0:
            raise PipelineError(f"distill: lr={self.lr} must be in (0, 1)")
        if self.temperature <= 0:
            raise PipelineError(f"distill: temperature={self.temperature} must be > 0")
        if self.batch < 1:
            raise PipelineError(f"distill: batch={self.batch} must be >= 1")

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        torch = import_torch()
        from tqdm import tqdm

        batches = calibration_batches(ctx, self.name)
        reference = reference_model(ctx, self.name, model)
        samples = stack_samples(batches)
        count = len(next(iter(samples.values())))
        labels = self._labels(ctx, count)
        boundaries = match_boundaries(model, reference, ctx)
        logits = logits_tensor(model.graph)
        if logits != logits_tensor(reference.graph):
            raise PassError("distill: the compressed and original models name their outputs differently")
        student = TorchGraph(model.graph, trainable=True)
        teacher = TorchGraph(reference.graph, trainable=False)
        torch.manual_seed(getattr(ctx, "seed", 0) or 0)
        rng = np.random.default_rng(getattr(ctx, "seed", 0) or 0)
        optimizer = torch.optim.Adam(student.parameter_list(), lr=self.lr)
        capture = [name for name, _, _ in boundaries] + [logits]
        selectors = {name: None if kept is None else (torch.from_numpy(kept), axis) for name, kept, axis in boundaries}
        targets = self._teacher_outputs(torch, teacher, samples, capture, count)
        history = []
        lam = 0.0
        bar = tqdm(range(self.epochs), desc=self.name, unit="epoch", disable=not getattr(ctx, "progress", False))
        for epoch in bar:
            guidance_only = epoch < self.stage1_epochs and boundaries
            order = rng.permutation(count)
            sums = {"task": 0.0, "guide": 0.0}
            for start in range(0, count, self.batch):
                pick = order[start:start + self.batch]
                feeds = {k: torch.from_numpy(v[pick]) for k, v in samples.items()}
                if targets is None:
                    with torch.no_grad():
                        target = teacher(feeds, capture)
                else:
                    target = {name: value[pick] for name, value in targets.items()}
                got = student(feeds, capture)
                task = self._task_loss(torch, got[logits], target[logits],
                                       None if labels is None else torch.from_numpy(labels[pick]))
                guide = sum((0.5 * (got[b] - _select(target[b], selectors[b])).pow(2).mean() for b in selectors),
                            torch.zeros(()))
                if start == 0:
                    # lambda * guidance equals the task loss at the start of the epoch, never more
                    guide_now = float(guide.detach())
                    lam = float(task.detach()) / guide_now if guide_now > 1e-12 else 0.0
                loss = guide if guidance_only else task + lam * guide
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                sums["task"] += float(task.detach()) * len(pick)
                sums["guide"] += float(guide.detach()) * len(pick)
            epoch_loss = {k: v / count for k, v in sums.items()}
            history.append({"epoch": epoch + 1, "stage": 1 if guidance_only else 2, "lambda": lam, **epoch_loss})
            bar.set_postfix(task=f"{epoch_loss['task']:.4f}", guide=f"{epoch_loss['guide']:.4f}")
        written = student.write_back()
        return PassResult(True, {"boundaries": [entry[0] for entry in boundaries], "samples": count,
                                 "labels": labels is not None,
                                 "parameters": written, "history": history})

    def _teacher_outputs(self, torch, teacher, samples, capture, count) -> dict | None:
        """The teacher's captured tensors for every sample, computed once (inputs never change);
        None when they would take more than TEACHER_CACHE_BYTES (then they are recomputed per step)."""
        parts: dict[str, list] = {name: [] for name in capture}
        with torch.no_grad():
            for start in range(0, count, self.batch):
                if start == self.batch:
                    per_sample = sum(v[0].numel() * 4 for v in parts.values()) / self.batch
                    if per_sample * count > TEACHER_CACHE_BYTES:
                        return None
                feeds = {k: torch.from_numpy(v[start:start + self.batch]) for k, v in samples.items()}
                for name, value in teacher(feeds, capture).items():
                    if name in parts:
                        parts[name].append(value)
        return {name: torch.cat(values) for name, values in parts.items()}

    def _labels(self, ctx, count: int) -> np.ndarray | None:
        labels = (getattr(ctx, "notes", None) or {}).get("labels")
        if labels is None:
            return None
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(labels) != count:
            raise PassError(f"distill: ctx.notes['labels'] has {len(labels)} labels for {count} calibration samples")
        return labels

    def _task_loss(self, torch, student_logits, teacher_logits, labels):
        F = torch.nn.functional
        s = student_logits.reshape(student_logits.shape[0], -1)
        if labels is not None:
            return F.cross_entropy(s, labels)
        t = teacher_logits.reshape(teacher_logits.shape[0], -1)
        temp = self.temperature
        return F.kl_div(F.log_softmax(s / temp, dim=1), F.softmax(t / temp, dim=1), reduction="batchmean") * temp * temp


def _select(teacher_value, selector):
    """The teacher's channels that the pruned student kept: `selector` is (kept indices, channel axis),
    or None for all of them."""
    return teacher_value if selector is None else teacher_value.index_select(selector[1], selector[0])
