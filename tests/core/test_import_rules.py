"""The house rules on imports, enforced on the product code (slimcc/, ir/, passes/, models/):
only targets/ imports tvm; only ir/ touches onnx protobufs (onnx itself, onnx.helper,
numpy_helper, *Proto classes). Allowed exceptions: models/zoo.py and models/train_digits.py
build and export ONNX models from scratch (that is their one job), and tests build fixtures."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("slimcc", "ir", "passes", "models")
ONNX_ALLOWED = {"models/zoo.py", "models/train_digits.py"}


def product_files() -> list[Path]:
    """Every Python file of the product folders checked here (targets/ and bench/ are checked elsewhere)."""
    return sorted(p for folder in PRODUCT for p in (ROOT / folder).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def protobuf_uses(path: Path) -> set[str]:
    """onnx protobuf names a file mentions in code: onnx.helper, numpy_helper, SomethingProto."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and node.attr in ("helper", "numpy_helper") or (
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
    for path in product_files():
        rel = str(path.relative_to(ROOT))
        if rel.startswith("ir/") or rel in ONNX_ALLOWED:
            continue
        onnx_imports = {m for m in imported_modules(path) if m == "onnx" or m.startswith("onnx.")}
        uses = protobuf_uses(path)
        if onnx_imports or uses:
            offenders[rel] = sorted(onnx_imports | uses)
    assert offenders == {}
