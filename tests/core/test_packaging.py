"""Every Python package folder in the tree is declared in pyproject (a non-editable install finds it)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_mapped():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {Path(folder) for folder in config["package-dir"].values()}
    declared = set(config["packages"])
    assert declared == set(config["package-dir"]), "packages and package-dir must name the same packages"
    for top in ("slimcc", "ir", "passes", "targets", "models"):
        for init in (ROOT / top).rglob("__init__.py"):
            folder = init.parent.relative_to(ROOT)
            assert folder in mapped, f"{folder} has an __init__.py but is not in pyproject's package-dir"
