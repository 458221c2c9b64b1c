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


def test_amx_is_read_from_the_cpu_flags(tmp_path, monkeypatch):
    import slimcc.targets.target as target
    from slimcc.targets.target import host_has_amx

    monkeypatch.setattr(target, "amx_permitted", lambda: True)

    both, tile_only = tmp_path / "both", tmp_path / "tile"
    both.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n")
    tile_only.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_tile\n")
    assert host_has_amx(str(both)) and not host_has_amx(str(tile_only))
    assert not host_has_amx(str(tmp_path / "missing"))


def test_detected_amx_host_gets_amx_attributes_and_a_named_cpu_does_not(monkeypatch):
    import slimcc.targets.target as target

    monkeypatch.setattr(target, "host_has_amx", lambda: True)
    assert {"+amx-tile", "+amx-int8"} <= set(make_target("x86").tvm["mattr"])
    assert "mattr" not in make_target("x86", mcpu="icelake-server").tvm


def test_amx_needs_the_kernels_permission(tmp_path, monkeypatch):
    import slimcc.targets.target as target

    both = tmp_path / "both"
    both.write_text("flags\t\t: amx_tile amx_int8\n")
    monkeypatch.setattr(target, "amx_permitted", lambda: False)
    assert not target.host_has_amx(str(both))
