"""The house rules on imports: only targets/ imports tvm (checked on slimcc/, ir/, passes/, models/);
only ir/ touches onnx protobufs (onnx itself, onnx.helper, numpy_helper, *Proto classes, protobuf
methods such as SerializeToString), checked
on every folder of the package and on the benches. The model zoo and the digits export build their
protos through slimcc.ir.protobuild and slimcc.ir.model; tests build fixtures and are not checked."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("slimcc", "ir", "passes", "models")
PROTOBUF_CHECKED = (*PRODUCT, "targets", "bench")


def product_files(folders: tuple[str, ...] = PRODUCT) -> list[Path]:
    """Every Python file of `folders` (the product code without targets/ by default)."""
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


PROTOBUF_METHODS = ("SerializeToString", "ParseFromString", "MergeFromString", "CopyFrom", "HasField",
                    "ClearField", "ByteSize")


def protobuf_uses(path: Path) -> set[str]:
    """onnx protobuf names a file mentions in code: onnx.helper, numpy_helper, SomethingProto, and
    protobuf message methods (SerializeToString...) called on anything."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and node.attr in ("helper", "numpy_helper", *PROTOBUF_METHODS) or (
                isinstance(node, (ast.Attribute, ast.Name)) and getattr(node, "attr", getattr(node, "id", ""))
                .endswith("Proto")):
            found.add(ast.unparse(node))
    return found


def test_only_targets_import_tvm():
    offenders = [str(p.relative_to(ROOT)) for p in product_files()
                 if any(m == "tvm" or m.startswith("tvm.") for m in imported_modules(p))]
    assert offenders == []


def test_only_ir_touches_onnx_protobufs():
    offenders = {}
    for path in product_files(PROTOBUF_CHECKED):
        rel = str(path.relative_to(ROOT))
        if rel.startswith("ir/"):
            continue
        onnx_imports = {m for m in imported_modules(path) if m == "onnx" or m.startswith("onnx.")}
        uses = protobuf_uses(path)
        if onnx_imports or uses:
            offenders[rel] = sorted(onnx_imports | uses)
    assert offenders == {}


def test_the_protobuf_check_sees_every_way_in(tmp_path):
    """The checks above would pass vacuously if they missed imports or names; they do not."""
    sample = tmp_path / "sample.py"
    sample.write_text("import onnx.helper as h\nfrom onnx import numpy_helper\n"
                      "def f(m):\n    from tvm import relax\n    return onnx.ModelProto, m.helper, "
                      "m.to_proto().SerializeToString()\n")
    assert {"onnx.helper", "onnx", "tvm"} <= imported_modules(sample)
    assert protobuf_uses(sample) == {"onnx.ModelProto", "m.helper", "m.to_proto().SerializeToString"}
    assert len(product_files(PROTOBUF_CHECKED)) > len(product_files()) > 100
