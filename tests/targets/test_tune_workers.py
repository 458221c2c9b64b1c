"""The tuning speed-ups keep MetaSchedule's behaviour: same `inspect` answers, heaviest kernels first."""

from __future__ import annotations

import importlib._bootstrap as bootstrap
import inspect
import runpy

from slimcc.targets.tune import MIN_TRIALS_PER_TASK, choose_tasks, fuse_for_tuning, rank_tasks
from slimcc.targets.tune_workers import index_pseudo_source_files


def _frozen_function_codes():
    return [bootstrap._find_and_load.__code__, runpy.run_module.__code__]


def test_indexing_pseudo_files_keeps_what_getmodule_answers():
    # what getmodule finds by scanning sys.modules, for frozen code and for module-less pseudo-files
    ast_code = compile("1", "<ast>", "eval")
    objects = [*_frozen_function_codes(), ast_code]
    saved = dict(inspect.modulesbyfile)
    for code in objects:
        inspect.modulesbyfile.pop(code.co_filename, None)
    try:
        expected = [inspect.getmodule(code, code.co_filename) for code in objects]
        index_pseudo_source_files()
        for code in objects:
            assert code.co_filename in inspect.modulesbyfile, code.co_filename
        assert [inspect.getmodule(code, code.co_filename) for code in objects] == expected
    finally:
        inspect.modulesbyfile.clear()
        inspect.modulesbyfile.update(saved)
    assert expected == [None] * len(objects)  # none of them has a module file getmodule can find


def test_heaviest_kernels_are_tuned_first(zoo_model, x86):
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    from slimcc.targets.relax_import import prepare_for_build, to_relax

    target = x86.to_tvm()
    mod = fuse_for_tuning(prepare_for_build(to_relax(zoo_model("conv-gemm")), target), target)
    ranked = rank_tasks(ms.relax_integration.extract_tasks(mod, target))
    costs = [estimate_tir_flops(t.dispatched[0]) * t.weight for t in ranked]
    assert costs == sorted(costs, reverse=True) and len(ranked) >= 3
    assert "conv" in ranked[0].task_name  # slimcc_conv: the packed conv of targets/schedules

    assert choose_tasks(ranked, 1) == ranked[:1]
    assert choose_tasks(ranked, 2 * MIN_TRIALS_PER_TASK) == ranked[:2]
    assert choose_tasks(ranked, 1000) == ranked
