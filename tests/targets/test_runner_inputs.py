"""How the runner hands numpy inputs to TVM: in place where the memory qualifies, copied otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from slimcc.targets.runner import TVM_ALIGNMENT, aligned_array, device_tensor

tvm = pytest.importorskip("tvm")


def test_aligned_array_is_an_aligned_equal_copy():
    source = np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7)[:, ::2]  # not contiguous
    out = aligned_array(source)
    assert out.ctypes.data % TVM_ALIGNMENT == 0 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, source)


def test_an_aligned_cpu_input_is_read_in_place():
    value = aligned_array(np.zeros((2, 16), np.float32))
    tensor = device_tensor(value, tvm.cpu(0))
    value[1, 3] = 7.0  # the tensor is the numpy memory itself
    assert tensor.numpy()[1, 3] == 7.0


def test_an_unaligned_input_is_copied():
    raw = aligned_array(np.zeros(33, np.float32))
    value = raw[1:]  # 4 bytes past a 64-byte boundary
    tensor = device_tensor(value, tvm.cpu(0))
    value[0] = 7.0
    assert tensor.numpy()[0] == 0.0 and tensor.shape == (32,)


def test_a_read_only_aligned_input_is_copied():
    value = aligned_array(np.arange(16, dtype=np.float32))
    value.flags.writeable = False  # DLPack cannot mark a tensor read-only
    tensor = device_tensor(value, tvm.cpu(0))
    np.testing.assert_array_equal(tensor.numpy(), value)
