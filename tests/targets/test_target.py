"""Target construction: host CPU detection, aarch64 and CUDA target dicts, bad options refused."""

from __future__ import annotations

import pytest

from slimcc.errors import SlimccError
from slimcc.targets.target import TargetSpec, host_cpu_name, make_target


def test_x86_uses_host_cpu_and_cores():
    import os

    spec = make_target("x86")
    assert spec.tvm["kind"] == "llvm"
    assert spec.tvm["mcpu"] == host_cpu_name() and spec.tvm["mcpu"] not in ("", "generic")
    assert spec.tvm["num-cores"] == len(os.sched_getaffinity(0))
    assert make_target("x86", mcpu="x86-64-v3", num_cores=1).tvm == {"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 1}


def test_arm_target_dict_and_dotprod_for_int8():
    assert make_target("arm").tvm == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    assert make_target("arm", int8=True).tvm["mattr"] == ["+neon", "+dotprod"]
    assert make_target("arm").cross_compiler == "aarch64-linux-gnu-g++"
    assert make_target("arm", int8=True).to_tvm().attrs["feature.has_dotprod"]


def test_cuda_target_has_arch_and_host():
    spec = make_target("cuda", cuda_arch="sm_86")
    assert spec.tvm == {"kind": "cuda", "arch": "sm_86"}
    target = spec.to_tvm()
    assert target.kind.name == "cuda" and target.host.kind.name == "llvm"


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="riscv"), "unknown target"),
    (dict(name="x86", mcpu="not-a-cpu"), "does not know"),
    (dict(name="cuda", cuda_arch="ampere"), "sm_XX"),
    (dict(name="x86", num_cores=0), "num-cores"),
])
def test_bad_target_options_are_refused(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(SlimccError, match=message):
        make_target(name, **kwargs)


def test_spec_round_trips_through_json_dict():
    spec = make_target("cuda", cuda_arch="sm_80")
    assert TargetSpec.from_dict(spec.as_dict()) == spec
