"""PassManager: run passes in sequence (optionally to a fixpoint), verify each, time each."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from slimcc.errors import PassError, PassVerificationError, SlimccError, VerificationError
from slimcc.ir.model import Model, check_model_valid, first_line
from slimcc.ir.names import shared_names
from slimcc.passes.base import Pass, PassContext, PassResult


@dataclass
class PassRecord:
    """One pass execution: name, spec, result, seconds, and the verification outcome if any."""

    name: str
    spec: str
    result: PassResult
    seconds: float
    verification: dict | None = None
    rolled_back: bool = False


@dataclass
class ManagerReport:
    """Everything that ran, in order."""

    records: list[PassRecord] = field(default_factory=list)
    verification: dict | None = None  # the final comparison with the original, set by the verified run

    @property
    def modified(self) -> bool:
        return any(r.result.modified and not r.rolled_back for r in self.records)

    def as_dict(self) -> list[dict]:
        return [{"pass": r.name, "spec": r.spec, "modified": r.result.modified, "seconds": round(r.seconds, 4),
                 "stats": r.result.stats, "verification": r.verification, "rolled_back": r.rolled_back}
                for r in self.records]


Verifier = Callable[[Pass, Model, Model], dict | None]


class PassManager:
    """Runs a list of passes over a Model.

    verify_each: after each pass, onnx.checker + strict shape inference must pass.
    equivalence: an optional callable (pass, before, after) -> dict that raises
    VerificationError when the rewrite is not acceptable; with `rollback=True` the
    model is restored and the run continues, otherwise the error propagates.
    fixpoint: repeat the whole sequence until no pass modifies the model.
    """

    def __init__(self, passes: list[Pass], *, verify_each: bool = False, equivalence: Verifier | None = None,
                 rollback: bool = False, fixpoint: bool = False, max_iterations: int = 8):
        self.passes = list(passes)
        self.verify_each = verify_each
        self.equivalence = equivalence
        self.rollback = rollback
        self.fixpoint = fixpoint
        self.max_iterations = max_iterations

    def run(self, model: Model, ctx: PassContext | None = None) -> ManagerReport:
        """Run the passes over `model` in place and return what happened."""
        ctx = ctx or PassContext()
        if ctx.reference is None:
            ctx.reference = model.copy()
        report = ManagerReport()
        for _ in range(self.max_iterations if self.fixpoint else 1):
            changed = False
            for pass_ in self.passes:
                record = self._run_one(pass_, model, ctx, report)
                report.records.append(record)
                changed |= record.result.modified and not record.rolled_back
            if not changed:
                break
        return report

    def _run_one(self, pass_: Pass, model: Model, ctx: PassContext, report: ManagerReport) -> PassRecord:
        before_names = [r.name for r in report.records]
        needs_copy = self.equivalence is not None or self.rollback
        before = model.copy() if needs_copy else None
        if pass_.needs_calibration and ctx.calibration is None:
            raise PassError(f"pass '{pass_.name}' needs calibration data; give --calib DATA")
        start = time.perf_counter()
        try:
            with shared_names(model.graph):  # new names without rescanning the graph per name
                result = pass_.run(model, ctx)
            if not isinstance(result, PassResult):
                raise TypeError(f"run() returned {type(result).__name__}, not PassResult")
            if self.verify_each and result.modified:
                check_model_valid(model)
            verification = None
            if self.equivalence is not None and result.modified:
                verification = self.equivalence(pass_, before, model)
        except SlimccError as exc:
            if self.rollback and before is not None:
                model.graph = before.graph
                return PassRecord(pass_.name, pass_.spec(), PassResult(False, {"error": str(exc)}),
                                  time.perf_counter() - start, {"error": str(exc)}, rolled_back=True)
            failure = PassVerificationError if isinstance(exc, VerificationError) else PassError
            raise failure(_describe(pass_, before_names, str(exc))) from None
        except Exception as exc:  # a bug or a library failure inside the pass
            raise PassError(_describe(pass_, before_names, f"{type(exc).__name__}: {first_line(exc)}")) from exc
        return PassRecord(pass_.name, pass_.spec(), result, time.perf_counter() - start, verification)


def _describe(pass_: Pass, before: list[str], message: str) -> str:
    ran = ", ".join(before) if before else "nothing"
    return f"pass '{pass_.spec()}' failed (after: {ran}): {message}"
