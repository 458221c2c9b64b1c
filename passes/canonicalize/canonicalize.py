"""canonicalize: the composite of all canonicalization passes, run to a fixpoint.

It also lowers LSTM/GRU (lower-recurrent) so that every canonical model imports into TVM;
`recurrent=false` keeps them as they are (e.g. for a model deployed on onnxruntime, whose
fused LSTM kernel is faster than the unrolled steps).
"""

from __future__ import annotations

from slimcc.errors import PipelineError
from slimcc.ir.fingerprint import structure_fingerprint
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.canonicalize._shapes import dynamic_tensor_names, forget_unknown_output_shapes
from slimcc.passes.canonicalize.constant_to_initializer import ConstantToInitializer
from slimcc.passes.canonicalize.fold_batchnorm import FoldBatchNorm
from slimcc.passes.canonicalize.fold_constants import FoldConstants
from slimcc.passes.canonicalize.fold_scale_bias import FoldScaleBias
from slimcc.passes.canonicalize.lower_recurrent import LowerRecurrent
from slimcc.passes.canonicalize.remove_identity import RemoveIdentity
from slimcc.passes.canonicalize.upgrade_opset import DEFAULT_TARGET_OPSET, MIN_OPSET, UpgradeOpset

MAX_ROUNDS = 8
CANONICAL_KEY = "slimcc.canonical"  # metadata: pass spec and structure fingerprint after canonicalize


@register_pass("canonicalize")
class Canonicalize(Pass):
    """Opset upgrade, Constant->initializer, constant/shape folding, Identity removal, BN/scale/bias folding, LSTM/GRU lowering."""

    opset: int = DEFAULT_TARGET_OPSET
    recurrent: bool = True

    def __post_init__(self):
        if self.opset < MIN_OPSET:
            raise PipelineError(f"canonicalize: opset={self.opset} is too old; use {MIN_OPSET} or newer")

    def steps(self) -> list[Pass]:
        """The passes of one round, in order (lower-recurrent last: it needs the folded, static shapes)."""
        steps = [ConstantToInitializer(), FoldConstants(), RemoveIdentity(), FoldBatchNorm(), FoldScaleBias()]
        return steps + [LowerRecurrent()] if self.recurrent else steps

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        nodes_before = len(model.graph.nodes)
        forget_unknown_output_shapes(model.graph)
        upgrade = UpgradeOpset(self.opset).run(model, ctx)
        per_pass: dict[str, dict] = {"upgrade-opset": upgrade.stats}
        modified = upgrade.modified
        rounds = 0
        for rounds in range(1, MAX_ROUNDS + 1):
            changed = False
            for step in self.steps():
                result = step.run(model, ctx)
                changed |= result.modified
                per_pass[step.name] = _merge(per_pass.get(step.name), result.stats)
            modified |= changed
            if not changed:
                break
        forget_unknown_output_shapes(model.graph)
        model.refresh_shapes()
        dynamic = dynamic_tensor_names(model.graph)
        stats = {"nodes_before": nodes_before, "nodes_after": len(model.graph.nodes), "rounds": rounds,
                 "opset": model.opset, "static": not dynamic, "passes": per_pass}
        if dynamic:
            stats["dynamic_tensors"] = dynamic[:20]
            model.metadata.pop(CANONICAL_KEY, None)
        else:
            model.metadata[CANONICAL_KEY] = self._mark(model)
        return PassResult(modified, stats)

    def _mark(self, model) -> str:
        return f"{self.spec()}:{structure_fingerprint(model.graph)}"

    def is_canonical(self, model) -> bool:
        """True when this canonicalization has nothing left to do: its mark (written when it left the
        model static) matches the model's current structure, so no pass has changed it since."""
        return model.metadata.get(CANONICAL_KEY) == self._mark(model) and model.is_static()


def _merge(old: dict | None, new: dict) -> dict:
    """Add up counters across rounds; keep the last round's refusals (what is left)."""
    if old is None:
        return dict(new)
    merged = dict(new)
    if "applied" in new:
        merged["applied"] = {k: old["applied"].get(k, 0) + v for k, v in new["applied"].items()}
    if "folded_nodes" in new:
        merged["folded_nodes"] = old["folded_nodes"] + new["folded_nodes"]
    merged.pop("sweeps", None)
    return merged
