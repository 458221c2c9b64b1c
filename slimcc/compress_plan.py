"""Pick a sensible pass pipeline from a few high-level wishes (MACs target, Tucker speedup, int8).

`slimcc compress`, `slimcc.compress` and `slimcc demo` all plan through here, so the
pipeline text users see (and can edit and rerun with `slimcc optimize -p`) is the same
everywhere. Passes that are not registered in this installation are left out with a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from slimcc.errors import PipelineError
from slimcc.passes.base import registry

DEFAULT_MACS = 0.5


@dataclass
class Plan:
    """A planned pipeline: its text, and why passes were added or left out."""

    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The pipeline as text for `slimcc optimize -p`."""
        return ",".join(self.steps)

    def add(self, step: str, reason_if_missing: str = "") -> bool:
        """Append `step` if its pass is registered; otherwise record a note. Returns whether added."""
        name = step.partition("{")[0]
        if name in registry():
            self.steps.append(step)
            return True
        self.notes.append(f"{name} is not available in this installation; {reason_if_missing or 'left out'}")
        return False


# YOLOv8n at macs=0.7 (bench/prune_task.py, 61 fp32 boxes on 96 images): the default l1 ranking kept
# 20% of the boxes, criterion=reconstruction 38%, with allocation=sensitivity (on the output error
# the int8 placement uses) 57%, and with recover-lstsq{layers=all} 66%; l1 with sensitivity 28%
DATA_PRUNING = ",criterion=reconstruction,allocation=sensitivity"


# Pruning with calibration selects channels and refits every later layer on it: YOLOv8n at
# macs=0.7 kept 66% of its fp32 boxes calibrated on 8 photos and 87% on 32 (bench/prune_task.py)
PRUNING_CALIBRATION_SAMPLES = 32


def calibration_notes(planned: Plan, samples: int) -> list[str]:
    """What to tell a user whose calibration data is too small for the planned pipeline."""
    if samples >= PRUNING_CALIBRATION_SAMPLES or not any(s.startswith("prune-channels") for s in planned.steps):
        return []
    return [f"pruning chooses channels and refits every later layer on the calibration data, and {samples} "
            f"sample(s) is little for that: give at least {PRUNING_CALIBRATION_SAMPLES} (on YOLOv8n at "
            f"--macs 0.7, 8 calibration photos kept 66% of its detections, 32 kept 87%)"]


def check_wishes(macs: float | None, rank_speedup: float | None) -> None:
    """Refuse out-of-range wishes with a one-line message (before any work is done)."""
    if macs is not None and (not math.isfinite(macs) or not 0.0 < macs <= 1.0):
        raise PipelineError(f"--macs {macs}: give the fraction of MACs to keep, 0 < MACS <= 1 (e.g. 0.5)")
    if rank_speedup is not None and (not math.isfinite(rank_speedup) or rank_speedup <= 1.0):
        raise PipelineError(f"--rank-speedup {rank_speedup}: give a per-layer speedup > 1 (e.g. 2)")


def plan(*, macs: float | None = None, rank_speedup: float | None = None, int8: bool = False,
         has_calibration: bool = False, int8_speed: str | None = "onnxruntime",
         equalize_activations: bool = False) -> Plan:
    """The pipeline for these wishes.

    canonicalize first (static shapes, BN folded) so every later pass sees a clean graph;
    pruning before decomposition (decomposing channels that are about to be removed is
    wasted work); least-squares refit right after pruning, while the pruned layers still map
    one-to-one onto the original; quantization last (it fixes scales for the final weights);
    bias correction at the very end, so it also absorbs the quantization shift.
    Without any wish the default is pruning to DEFAULT_MACS of the MACs.
    `equalize_activations` (int8 with calibration) adds equalize-activation-ranges before the
    quantization: per-channel ranges equalized around HardSwish/Sigmoid with float Muls that
    onnxruntime runs as separate kernels, so only for TVM deployments (bench/tvm.py --equalize-activations).
    """
    check_wishes(macs, rank_speedup)
    if int8 and not has_calibration:
        raise PipelineError("--int8 needs calibration data for the activation ranges; give --calib FILE.npz|FOLDER")
    if macs is None and rank_speedup is None and not int8:
        macs = DEFAULT_MACS
    result = Plan()
    result.add("canonicalize", "the model is used as loaded")
    lossy = False
    if macs is not None and macs < 1.0:
        # with calibration data, channels are chosen by how well the next layers reconstruct
        # without them, and the MACs budget goes where measured output error grows least
        selection = DATA_PRUNING if has_calibration else ""
        lossy |= result.add(f"prune-channels{{macs={macs:g}{selection}}}", "no pruning")
        if has_calibration:
            # every later layer too, each on the already-refitted activations above it
            result.add("recover-lstsq{layers=all}", "pruned layers are not refitted")
    if rank_speedup is not None:
        lossy |= result.add(f"decompose-tucker{{speedup={rank_speedup:g}}}", "no low-rank decomposition")
    if int8 and equalize_activations and has_calibration:
        result.add("equalize-activation-ranges", "per-tensor activation ranges as calibrated")
    if int8:
        # placement=auto: the layers that stay float are chosen from measured sensitivity on the
        # calibration data, under qdq-insert's default output-error budget (no per-model settings);
        # equalize=auto keeps cross-layer equalization where it lowers the measured all-int8 error;
        # speed=onnxruntime keeps float the layers whose int8 form onnxruntime runs no faster (profiled);
        # int8_speed=None weighs error only (a model deployed with TVM, whose int8 kernels differ)
        # recover=bias: the whole model is first judged after the bias correction planned below
        # method=adaptive: minmax ranges, searched per tensor only where the all-int8 model is far over budget
        speed = f",speed={int8_speed}" if int8_speed else ""
        recover = ",recover=bias" if has_calibration else ""
        if result.add(f"qdq-insert{{method=adaptive,placement=auto,equalize=auto{speed}{recover}}}",
                      "the model stays float"):
            lossy = True
            result.add("qdq-propagate", "Q/DQ stay where they were inserted")
            result.add("qdq-cancel", "redundant DQ->Q pairs stay")
            result.add("qdq-align-channels", "3-channel (image) convs keep onnxruntime's slower generic int8 kernel")
    if lossy and has_calibration:
        result.add("recover-bias", "no bias correction")
    elif lossy:
        result.notes.append("no calibration data: accuracy-recovery passes (recover-lstsq, recover-bias) "
                            "were left out; give --calib to add them")
    return result


def plan_pipeline(*, macs: float | None = None, rank_speedup: float | None = None, int8: bool = False,
                  has_calibration: bool = False) -> str:
    """Just the pipeline text of `plan(...)`."""
    return plan(macs=macs, rank_speedup=rank_speedup, int8=int8, has_calibration=has_calibration).text
