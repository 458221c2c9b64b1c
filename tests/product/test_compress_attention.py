"""`slimcc compress --calib` on the zoo attention recognizer (attn-ctc: MatMuls on [N, T, C], issue 17).

Every compression with calibration data used to fail in recover-bias ("operands could not be broadcast
together with shapes (32,) (8,)": the sequence axis taken for the channel axis). Now each runs, and its
CTC label probabilities agree with the original model's on held-out crops of real photos.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from slimcc.compress_plan import plan
from slimcc.ir.cost import model_cost
from slimcc.ir.model import load_model
from slimcc.ir.verify import run_onnxruntime
from slimcc.models.data import image_names, zoo_inputs
from slimcc.models.zoo import build

# (options, largest relative error of the probabilities, smallest share of equal per-step argmax labels);
# measured on this model: int8 0.026 / 0.97, pruned 0.115 / 0.94, both 0.117 / 0.94
CASES = [
    (["--int8"], 0.05, 0.9),
    (["--macs", "0.7"], 0.2, 0.8),
    (["--macs", "0.7", "--int8"], 0.2, 0.8),
]


@pytest.fixture(scope="module")
def attn_file(tmp_path_factory):
    """The zoo attention recognizer on disk (input x [1, 3, 32, 32], y [1, 8, 11])."""
    path = tmp_path_factory.mktemp("zoo") / "attn-ctc.onnx"
    onnx.save(build("attn-ctc", seed=0), path)
    return path


@pytest.fixture(scope="module")
def attn_calib(tmp_path_factory):
    """16 calibration samples: crops of real photos, samples on a leading axis."""
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, x=np.concatenate([feed["x"] for feed in zoo_inputs(16, seed=0)]))
    return path


def held_out() -> list[dict[str, np.ndarray]]:
    """24 crops that are not calibration samples (another seed, without the whole photos every seed shares)."""
    whole = len(image_names("photos"))
    return zoo_inputs(whole + 24, seed=7)[whole:]


def linear_macs(model) -> int:
    """MACs of the Conv/MatMul/Gemm nodes."""
    return sum(node.macs for node in model_cost(model).per_node if node.op in ("Conv", "MatMul", "Gemm"))


def probabilities(model) -> np.ndarray:
    """The model's y [1, T, labels] for every held-out crop, stacked."""
    return np.concatenate([run_onnxruntime(model, feed)["y"] for feed in held_out()])


@pytest.mark.parametrize("options, max_rel_error, min_agreement", CASES, ids=["int8", "macs", "macs+int8"])
def test_compress_with_calibration_runs_and_agrees(cli, attn_file, attn_calib, tmp_path, options, max_rel_error,
                                                   min_agreement):
    out = tmp_path / "small.onnx"
    code, stdout, stderr = cli("--quiet", "compress", attn_file, *options, "--calib", attn_calib, "--json", "-o", out)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["pipeline"].endswith("recover-bias")
    bias = next(p for p in summary["passes"] if p["pass"] == "recover-bias")
    insert = next((p for p in summary["passes"] if p["pass"] == "qdq-insert"), None)
    # recover-bias corrects every pruned or int8 layer: int8 placement weighs onnxruntime's measured
    # speed, and may keep every layer of so small a model float
    if "--macs" in options or insert["stats"]["placement"]["quantized_layers"]:
        assert bias["stats"]["corrected"] >= 1

    original, small = load_model(attn_file), load_model(out)
    want, got = probabilities(original), probabilities(small)
    assert got.shape == want.shape == (24, 8, 11)
    rel_error = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    agreement = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    assert rel_error < max_rel_error, (options, rel_error)
    assert agreement >= min_agreement, (options, agreement)
    assert len(set(want.argmax(-1).ravel())) >= 3  # the labels vary, so agreement is not trivial
    if "--macs" in options:  # pruned to ~0.7 of the Conv/MatMul MACs (0.79 with int8: qdq-align-channels pads
        assert linear_macs(small) < 0.8 * linear_macs(original)  # the second conv's 13 inputs to 16)


def test_int8_bias_correction_keeps_matmuls_fusable(cli, attn_file, attn_calib, tmp_path):
    """recover-bias corrects a quantized MatMul in the bias Add behind its output's Q/DQ pair, so every
    int8 MatMul still feeds its QuantizeLinear directly (QLinearMatMul / onnxruntime's QDQ fusion)."""
    out = tmp_path / "q.onnx"
    # compress --int8's pipeline without weighing onnxruntime's speed, so every MatMul the budget allows is int8
    pipeline = plan(int8=True, has_calibration=True).text.replace(",speed=onnxruntime", "")
    assert pipeline != plan(int8=True, has_calibration=True).text
    code, _, stderr = cli("--quiet", "optimize", attn_file, "-p", pipeline, "--calib", attn_calib, "-o", out)
    assert code == 0, stderr
    graph = onnx.load(out).graph
    producers = {o: n for n in graph.node for o in n.output}
    quantized = [n for n in graph.node if n.op_type == "MatMul"
                 and producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"]
    assert len(quantized) >= 12
    for matmul in quantized:
        consumers = [n.op_type for n in graph.node if matmul.output[0] in n.input]
        assert consumers == ["QuantizeLinear"], (matmul.name, consumers)
