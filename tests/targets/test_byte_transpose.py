"""8-bit NCHW <-> NCHW16c as explicit byte transposes (targets/schedules/byte_transpose.py): every byte moves
where the layout says, whole 16-pixel steps and the tail alike."""

from __future__ import annotations

import numpy as np
import pytest

from slimcc.targets.target import make_target


@pytest.mark.parametrize("shape", [(1, 32, 12, 12), (2, 16, 3, 5), (1, 48, 7, 7)])  # steps only, tail only, both
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("to_blocked", [True, False])
def test_byte_transpose_moves_every_byte_like_numpy(shape, dtype, to_blocked):
    pytest.importorskip("tvm")
    from slimcc.targets.schedules.byte_transpose import byte_transpose_func
    from slimcc.targets.tvm_import import ensure_tvm

    tvm = ensure_tvm()
    n, c, h, w = shape
    info = np.iinfo(dtype)
    x = np.random.default_rng(0).integers(info.min, info.max + 1, shape).astype(dtype)
    blocked = np.ascontiguousarray(x.reshape(n, c // 16, 16, h, w).transpose(0, 1, 3, 4, 2))
    source, want = (x, blocked) if to_blocked else (blocked, x)
    func = byte_transpose_func(shape, dtype, to_blocked).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=make_target("x86", num_cores=1).to_tvm())
    out = tvm.runtime.tensor(np.zeros_like(want))
    lib["main"](tvm.runtime.tensor(source), out)
    np.testing.assert_array_equal(out.numpy(), want)
