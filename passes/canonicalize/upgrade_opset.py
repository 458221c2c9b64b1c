"""upgrade-opset: raise the default-domain opset (never lowers it)."""

from __future__ import annotations

from slimcc.errors import PipelineError
from slimcc.ir.opset import convert_opset
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass

MIN_OPSET = 13
DEFAULT_TARGET_OPSET = 17


@register_pass("upgrade-opset")
class UpgradeOpset(Pass):
    """Raise the model's opset to `opset` (>= 13) with onnx.version_converter; higher opsets are kept."""

    opset: int = DEFAULT_TARGET_OPSET

    def __post_init__(self):
        if self.opset < MIN_OPSET:
            raise PipelineError(f"upgrade-opset: opset={self.opset} is too old; use {MIN_OPSET} or newer")

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        before = model.opset
        if before >= self.opset:
            return PassResult(False, {"from": before, "to": before})
        convert_opset(model, self.opset)
        return PassResult(True, {"from": before, "to": model.opset})
