"""Tuning starts from slimcc's schedules: the design space of a kernel slimcc schedules is that
schedule with sampled tile sizes, whose starting decisions give the untuned kernel's register tile."""

from __future__ import annotations

from dataclasses import replace

import pytest

from slimcc.targets.compiler import prepare_model
from slimcc.targets.relax_import import prepare_for_build, to_relax
from slimcc.targets.schedules.apply import slimcc_schedule
from slimcc.targets.schedules.isa import cpu_vector_for
from slimcc.targets.tune import fuse_for_tuning
from slimcc.targets.tune_space import slimcc_space, takes_kernel

from test_tune_one_conv import one_conv_model

tvm = pytest.importorskip("tvm")


@pytest.fixture(scope="module")
def conv_task(x86):
    from tvm.s_tir import meta_schedule as ms

    target = x86.to_tvm()
    mod = fuse_for_tuning(prepare_for_build(to_relax(prepare_model(one_conv_model())), target), target)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    # the conv, and the conversions of the model's NCHW input and output to its blocked layout
    (task,) = [task for task in tasks if "slimcc_conv" in task.task_name]
    return task, cpu_vector_for(target)


def test_slimcc_space_starts_at_the_untuned_schedule(conv_task):
    from tvm import s_tir

    task, vector = conv_task
    assert takes_kernel(task.dispatched[0], vector)
    space = slimcc_space(vector)
    (design,) = space.generate_design_space(task.dispatched[0])
    kinds = [inst.kind.name for inst in design.trace.insts]
    assert kinds.count("SamplePerfectTile") >= 2, kinds  # output-channel and column tiles are decisions
    untuned, rule = slimcc_schedule(task.dispatched[0], vector)
    assert rule == "conv"
    assert _conv_loop_extents(design) == _conv_loop_extents(untuned)

    other = s_tir.Schedule(task.dispatched[0])
    column_tile = [inst for inst in design.trace.insts if inst.kind.name == "SamplePerfectTile"][-1]
    design.trace.with_decision(column_tile, [4, 4], remove_postproc=True).apply_to_schedule(other, remove_postproc=True)
    assert _conv_loop_extents(other) != _conv_loop_extents(untuned)  # a new decision is a new register tile
    assert 4 in _conv_loop_extents(other)


def test_tunable_flag_changes_no_default_schedule(conv_task):
    task, vector = conv_task
    plain, _ = slimcc_schedule(task.dispatched[0], vector)
    sampled, _ = slimcc_schedule(task.dispatched[0], replace(vector, tunable=True))
    assert "SamplePerfectTile" not in [inst.kind.name for inst in plain.trace.insts]
    assert "SamplePerfectTile" in [inst.kind.name for inst in sampled.trace.insts]


def _conv_loop_extents(sch) -> list[int]:
    """Extents of the loops around the conv's update block (its register tile is the innermost)."""
    block = sch.get_sblock("slimcc_conv_update")
    return [int(sch.get(loop).extent) for loop in sch.get_loops(block)]


def test_winograd_space_replays_with_unit_tiles(x86):
    """The Winograd kernel's design space replays with every sampled tile set to 1 (a tuning run
    failed when a unit tile removed a loop the trace still named)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    weight = numpy_helper.from_array(np.random.default_rng(1).standard_normal((32, 32, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "wino",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])], [weight])
    model: onnx.ModelProto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    target = x86.to_tvm()
    mod = fuse_for_tuning(prepare_for_build(to_relax(prepare_model(model)), target), target)
    (task,) = [task for task in ms.relax_integration.extract_tasks(mod, target) if "slimcc_wino" in task.task_name]
    (design,) = slimcc_space(cpu_vector_for(target)).generate_design_space(task.dispatched[0])
    trace = design.trace
    tiles = [inst for inst in trace.insts if inst.kind.name == "SamplePerfectTile"]
    assert tiles, [inst.kind.name for inst in trace.insts]
    for inst in tiles:
        extent = int(np.prod([int(f) for f in trace.decisions[inst]]))
        trace = trace.with_decision(inst, [extent, 1], remove_postproc=True)
    replayed = s_tir.Schedule(task.dispatched[0])
    trace.apply_to_schedule(replayed, remove_postproc=True)
    assert replayed.get_sblock("slimcc_wino_product_update") is not None
