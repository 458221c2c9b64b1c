"""The verified run: the one gate between a pass pipeline and its caller.

Every entry point runs passes through `run_verified`: `slimcc optimize`, `slimcc compress`,
`slimcc demo`, `slimcc.Pipeline.run` and `slimcc.compress`. It owns

- the verification inputs: random inputs plus the first calibration batches (`verification_feeds`);
- the float-noise allowance: an error no larger than NOISE_FACTOR x the change onnxruntime's own
  fusions make is float reordering, not a bug (`float_noise`, `excess_error`);
- the budgets: a pass whose configured instance is exact (`Pass.is_exact()`) must keep the outputs
  of the model before it within EXACT_REL_TOL (or `max_error`); with `max_error`, a lossy pass must
  keep the outputs within `max_error` of the original, and so must the final model;
- validity: onnx.checker + strict shape inference after every pass, and the final model must load
  in onnxruntime;
- rollback (`rollback=True`: a pass failing its check is undone, named in the report, and the run
  goes on) and the report (`VerifiedRun`).

The pipeline runs on a copy; the caller's model is replaced only when everything passed, so a
refused run leaves the model (and the disk) untouched. `verify=False` is the explicit opt-out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from slimcc.errors import SlimccError, VerificationError
from slimcc.ir.model import Model
from slimcc.ir.verify import (OutputError, VerifyReport, make_session, max_abs_difference, run_batches, worst_of,
                              random_feeds, run_onnxruntime)
from slimcc.passes.base import Pass, PassContext
from slimcc.passes.manager import ManagerReport, PassManager

EXACT_REL_TOL = 1e-4
MAX_CALIB_VERIFY_BATCHES = 8
NOISE_FACTOR = 4.0  # an error up to 4x onnxruntime's own fusion noise is float reordering, not a bug


def pipeline_is_exact(passes: list[Pass]) -> bool:
    """True when every configured pass of the pipeline keeps outputs equal to float tolerance."""
    return all(p.is_exact() for p in passes)


def verification_feeds(model: Model, calib, seed: int, *, session=None) -> list[dict[str, np.ndarray]]:
    """Random inputs plus the first calibration batches: what equivalence is judged on.

    Random inputs the original model cannot run (an index or axis input out of range, an input
    type with no random generator) prove nothing; they are dropped when calibration batches are
    there, and otherwise verification is refused with a one-line reason.
    """
    batches = list(calib.batches[:MAX_CALIB_VERIFY_BATCHES]) if calib is not None else []
    try:
        session = session or make_session(model)
        random = random_feeds(model, seed=seed, session=session)
        run_onnxruntime(model, random, session=session)
    except SlimccError as exc:
        if batches:
            return batches
        raise VerificationError(f"cannot verify on random inputs ({exc}); give calibration data the model "
                                "accepts, or turn verification off") from None
    return [random] + batches


def float_noise(reference: Model, feeds: list[dict[str, np.ndarray]],
                plain: list[dict[str, np.ndarray]] | None = None) -> list[float]:
    """Per output, the largest change onnxruntime's own fusions make (optimized vs unoptimized run).

    Outputs near zero (e.g. sigmoid scores on random inputs) make relative errors meaningless;
    a rewrite that moves an output no more than reordered float arithmetic does is exact.
    `plain` are the unoptimized outputs when already computed.
    """
    plain = plain if plain is not None else run_batches(reference, feeds)
    try:
        fused = run_batches(reference, feeds, session=make_session(reference, optimize=True))
    except SlimccError:  # the optimizer refuses some graphs; then no noise allowance
        return []
    noise: list[float] = []
    for a_out, b_out in zip(plain, fused):
        diffs = [max_abs_difference(x, y) for x, y in zip(a_out.values(), b_out.values())]
        noise = [max(n, d) for n, d in zip(noise, diffs)] if noise else diffs
    return noise


def excess_error(report: VerifyReport, tolerance: float, noise: list[float]) -> OutputError | None:
    """The worst output whose error exceeds both tolerance x scale and the float noise, or None."""
    bad = [o for o, n in zip(report.outputs, noise + [0.0] * len(report.outputs))
           if o.max_rel > tolerance and o.max_abs > NOISE_FACTOR * n]
    return max(bad, key=lambda o: o.max_rel) if bad else None


class PassCheck:
    """A PassManager equivalence hook: an exact pass must keep outputs within `tolerance` of the model
    before it; with `max_error`, a lossy pass must keep them within `max_error` of the original
    (`reference` outputs), so the lossy pass that breaks the budget is the one named and rolled back.

    Each check runs one onnxruntime session (the model after the pass); the outputs of the model
    before it are those of the last accepted check (`current`), or of the original. PassManager
    checks every pass that reports a change, so `current` always belongs to the model as it is.
    """

    def __init__(self, feeds: list[dict[str, np.ndarray]], tolerance: float, noise: list[float] | Model,
                 reference: list[dict[str, np.ndarray]], max_error: float | None = None):
        self.feeds, self.tolerance = feeds, tolerance
        self._noise = noise
        self.reference, self.max_error = reference, max_error
        self.current: list[dict[str, np.ndarray]] | None = reference

    @property
    def noise(self) -> list[float]:
        """The float-noise allowance; given as the original Model, it is measured on first need
        (one more session, only when some output is off by more than the tolerance)."""
        if isinstance(self._noise, Model):
            self._noise = float_noise(self._noise, self.feeds, self.reference)
        return self._noise

    @property
    def noise_measured(self) -> bool:
        """Whether the float-noise allowance was needed (and so measured)."""
        return not isinstance(self._noise, Model)

    def excess(self, report: VerifyReport, tolerance: float) -> OutputError | None:
        """`excess_error` of a report, measuring the noise only when an output exceeds `tolerance`."""
        if all(o.max_rel <= tolerance for o in report.outputs):
            return None
        return excess_error(report, tolerance, self.noise)

    def __call__(self, pass_: Pass, before: Model, after: Model) -> dict | None:
        if pass_.is_exact():
            base = self.current if self.current is not None else run_batches(before, self.feeds)
            budget = self.tolerance

            def refusal(worst):
                return (f"exact pass changed output {worst.name!r}: relative error {worst.max_rel:.3g} > "
                        f"{self.tolerance:g}")
        elif self.max_error is None:
            self.current = None  # unchecked lossy change: the next check runs the model before it
            return None
        else:
            base, budget = self.reference, self.max_error

            def refusal(worst):
                return (f"output {worst.name!r} relative error {worst.max_rel:.3g} > --max-error {self.max_error:g} "
                        "against the original (lossy pipeline budget)")
        outputs = run_batches(after, self.feeds)
        report = worst_of(base, outputs)
        worst = self.excess(report, budget)
        if worst is not None:
            raise VerificationError(refusal(worst))
        self.current = outputs
        return report.as_dict()


def make_pass_check(feeds: list[dict[str, np.ndarray]], tolerance: float, noise: list[float] | Model,
                    reference: list[dict[str, np.ndarray]], max_error: float | None = None) -> PassCheck:
    """The equivalence hook of a verified run (see PassCheck); `reference` are the original's outputs,
    `noise` the float-noise allowance or the original Model to measure it from when needed."""
    return PassCheck(feeds, tolerance, noise, reference, max_error)


@dataclass
class VerifiedRun:
    """The outcome of running a pipeline under the verification gate."""

    report: ManagerReport
    seconds: float
    verification: dict | None
    exact: bool

    @property
    def rolled_back(self) -> list[str]:
        """Names of the passes undone because they failed their check."""
        return [r.name for r in self.report.records if r.rolled_back]


def run_verified(model: Model, passes: list[Pass], calib=None, *, max_error: float | None = None, seed: int = 0,
                 progress: bool = True, verify: bool = True, rollback: bool = False,
                 reference: Model | None = None, fixpoint: bool = False,
                 check_valid: bool | None = None) -> VerifiedRun:
    """Run `passes` over `model` under the verification gate; `model` is replaced only on success.

    `reference` is the model data-aware passes (recovery) reconstruct towards (default: `model`
    as it is now). Raises VerificationError (one line) when a check fails, unless `rollback`
    undoes the failing pass; with `verify=False` the passes run unchecked (`check_valid` still
    runs onnx.checker after each pass; it defaults to `verify`).
    """
    exact = pipeline_is_exact(passes)
    tolerance = max_error if max_error is not None else (EXACT_REL_TOL if exact else None)
    original = model.copy()
    work = model.copy()
    check = None
    if verify:
        session = make_session(original)
        feeds = verification_feeds(original, calib, seed, session=session)
        reference_outputs = run_batches(original, feeds, session=session)
        del session
        check = make_pass_check(feeds, max_error if max_error is not None else EXACT_REL_TOL, original,
                                reference_outputs, max_error)
    ctx = PassContext(calibration=calib, reference=reference or original, progress=progress, seed=seed)
    start = time.perf_counter()
    validate = verify if check_valid is None else check_valid
    report = PassManager(passes, verify_each=validate, equivalence=check, rollback=rollback,
                         fixpoint=fixpoint).run(work, ctx)
    seconds = time.perf_counter() - start
    work.refresh_shapes()
    verification = final_check(check, work, tolerance, exact) if verify else None
    report.verification = verification
    model.graph, model.metadata = work.graph, work.metadata
    return VerifiedRun(report, seconds, verification, exact)


def final_check(check: PassCheck, result: Model, tolerance: float | None, exact: bool) -> dict:
    """Compare the final model with the original (it must load in onnxruntime and stay within `tolerance`).

    The result's outputs are those of the last accepted pass check when there is one (its session
    loaded this very model); otherwise the result runs in one more session.
    """
    try:
        outputs = check.current if check.current is not None else run_batches(result, check.feeds)
        compared = worst_of(check.reference, outputs)
    except VerificationError:
        raise
    except SlimccError as exc:
        raise VerificationError(f"the rewritten model fails: {exc}; nothing written") from None
    worst = check.excess(compared, tolerance) if tolerance is not None else None
    if worst is not None:
        kind = "exact" if exact else "lossy"
        raise VerificationError(f"result differs from the original: output {worst.name!r} relative "
                                f"error {worst.max_rel:.3g} > {tolerance:g} ({kind} pipeline); nothing written")
    measured = check.noise_measured
    return dict(compared.as_dict(), tolerance=tolerance, batches=len(check.feeds),
                float_noise=check.noise if measured else [], float_noise_measured=measured)
