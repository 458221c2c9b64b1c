"""PassManager: ordering, fixpoint, error attribution, verification and rollback."""

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from slimcc.errors import PassError, SlimccError
from slimcc.ir.model import load_model
from slimcc.ir.verify import assert_equivalent
from slimcc.passes.base import Pass, PassContext, PassResult
from slimcc.passes.manager import PassManager


def relu_chain_model(length=3):
    nodes, prev = [], "x"
    for i in range(length):
        nodes.append(helper.make_node("Relu", [prev], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"], name="out"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@dataclass(frozen=True)
class DropOneDoubleRelu(Pass):
    """Remove one Relu that feeds another Relu (Relu is idempotent)."""

    def run(self, model, ctx=None):
        graph = model.graph
        for node in graph.nodes:
            if node.op == "Relu" and len(node.outputs[0].outputs) == 1 and node.outputs[0].outputs[0].op == "Relu":
                consumer = node.outputs[0].outputs[0]
                consumer.inputs[0] = node.inputs[0]
                node.outputs.clear()
                graph.cleanup()
                return PassResult(True, {"removed": 1})
        return PassResult(False)


@dataclass(frozen=True)
class NegateOutput(Pass):
    """A deliberately wrong pass: turns the final Relu into Neg."""

    def run(self, model, ctx=None):
        relus = [n for n in model.graph.nodes if n.op == "Relu"]
        relus[-1].op = "Neg"
        return PassResult(True)


@dataclass(frozen=True)
class Explodes(Pass):
    def run(self, model, ctx=None):
        raise RuntimeError("boom\nsecond line")


DropOneDoubleRelu.name, NegateOutput.name, Explodes.name = "drop-double-relu", "negate-output", "explodes"


def test_fixpoint_runs_until_nothing_changes():
    model = relu_chain_model(4)
    original = model.copy()
    report = PassManager([DropOneDoubleRelu()], fixpoint=True, verify_each=True).run(model)
    assert [n.op for n in model.graph.nodes].count("Relu") == 1
    assert sum(r.result.stats.get("removed", 0) for r in report.records) == 3
    assert report.records[-1].result.modified is False
    assert_equivalent(original, model)


def test_single_sequence_without_fixpoint():
    model = relu_chain_model(4)
    PassManager([DropOneDoubleRelu()]).run(model)
    assert [n.op for n in model.graph.nodes].count("Relu") == 3


def test_error_names_pass_and_history():
    model = relu_chain_model(2)
    with pytest.raises(PassError) as info:
        PassManager([DropOneDoubleRelu(), Explodes()]).run(model)
    message = str(info.value)
    assert "'explodes'" in message and "after: drop-double-relu" in message and "boom" in message
    assert "\n" not in message


def equivalence_gate(pass_, before, after):
    return assert_equivalent(before, after).as_dict()


def test_equivalence_failure_rolls_back_with_name():
    model = relu_chain_model(2)
    report = PassManager([NegateOutput(), DropOneDoubleRelu()], equivalence=equivalence_gate,
                         rollback=True).run(model)
    first, second = report.records
    assert first.rolled_back and "differs" in first.verification["error"]
    assert not second.rolled_back and second.result.modified
    assert [n.op for n in model.graph.nodes] == ["Relu", "Identity"]


def test_equivalence_failure_without_rollback_raises():
    with pytest.raises(PassError, match="negate-output"):
        PassManager([NegateOutput()], equivalence=equivalence_gate).run(relu_chain_model(2))


def test_missing_calibration_is_reported():
    @dataclass(frozen=True)
    class NeedsData(Pass):
        needs_calibration = True

        def run(self, model, ctx=None):
            return PassResult(False)

    NeedsData.name = "needs-data"
    with pytest.raises(SlimccError, match="needs calibration data"):
        PassManager([NeedsData()]).run(relu_chain_model(1), PassContext())
