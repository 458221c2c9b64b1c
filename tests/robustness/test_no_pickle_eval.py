"""No pickle and no eval/exec anywhere in the source tree: model files and artifacts are data, never code."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("slimcc", "ir", "passes", "targets", "models", "bench", "tests", ".ci")
UNSAFE_MODULES = {"pickle", "cPickle", "cloudpickle", "dill", "shelve", "marshal", "joblib"}
UNSAFE_CALLS = {"eval", "exec"}


def python_files() -> list[Path]:
    files = [p for folder in SOURCE_DIRS if (ROOT / folder).is_dir() for p in (ROOT / folder).rglob("*.py")]
    return sorted(p for p in files if "__pycache__" not in p.parts)


def violations(path: Path) -> list[str]:
    """Code tokens (not comments or strings) that load pickles or evaluate text."""
    found = []
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
              if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)]
    for i, tok in enumerate(tokens):
        if tok.type != tokenize.NAME:
            continue
        before = tokens[i - 1].string if i else ""
        after = tokens[i + 1].string if i + 1 < len(tokens) else ""
        where = f"{path.relative_to(ROOT)}:{tok.start[0]}"
        if tok.string in UNSAFE_MODULES:
            found.append(f"{where}: uses {tok.string}")
        elif tok.string in UNSAFE_CALLS and before != "." and after == "(":
            found.append(f"{where}: calls {tok.string}()")
        elif tok.string == "allow_pickle" and after == "=" and i + 2 < len(tokens) and tokens[i + 2].string != "False":
            found.append(f"{where}: allow_pickle={tokens[i + 2].string}")
        elif tok.string in ("load", "loads") and before == "." and i >= 2 and tokens[i - 2].string == "torch":
            window = " ".join(t.string for t in tokens[i:i + 40])
            if "weights_only = True" not in window.replace("=", " = ").replace("  ", " "):
                found.append(f"{where}: torch.load without weights_only=True")
    return found


def test_scanner_catches_each_pattern(tmp_path):
    sample = tmp_path / "bad.py"
    sample.write_text("import pickle\nx = eval('1')\nexec('y=2')\nnp.load(f, allow_pickle=True)\n"
                      "# pickle in a comment is fine\ns = 'eval(1)'\nmodel.eval()\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = violations(sample)
    finally:
        ROOT = saved
    assert [f.split(": ", 1)[1] for f in found] == ["uses pickle", "calls eval()", "calls exec()",
                                                   "allow_pickle=True"]


def test_source_tree_has_no_pickle_or_eval():
    files = python_files()
    assert len(files) > 50  # the scan really covers the tree
    found = [v for path in files for v in violations(path)]
    assert found == [], "\n".join(found)


def test_no_allow_pickle_true_text_anywhere():
    hits = [str(p.relative_to(ROOT)) for p in python_files()
            if "allow_pickle=True" in p.read_text() and p.name != Path(__file__).name]
    assert hits == []
