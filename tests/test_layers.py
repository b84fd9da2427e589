"""The import rule between Beacon's packages, checked on every source file.

Everyone may import ``schemas`` and ``scoring``; ``schemas`` imports nothing of Beacon's; ``scoring``
only ``schemas``; ``pipeline`` and ``trainer`` never import each other nor ``service``; ``service`` may
import both; nothing imports ``bench``. Lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("schemas", "scoring", "pipeline", "trainer", "service", "bench")
ALLOWED = {
    "schemas": {"schemas"},
    "scoring": {"schemas", "scoring"},
    "pipeline": {"schemas", "scoring", "pipeline"},
    "trainer": {"schemas", "scoring", "trainer"},
    "service": {"schemas", "scoring", "pipeline", "trainer", "service"},
    "bench": {"schemas", "scoring", "pipeline", "trainer", "service", "bench"},
}


def beacon_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a Beacon package in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in PACKAGES]
    return found


def violations(root: Path) -> list[str]:
    out = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, module in beacon_imports(path):
                if module.split(".")[0] not in allowed:
                    out.append(f"{path.relative_to(root)}:{line} imports {module} ({package} may import "
                               f"only {', '.join(sorted(allowed))})")
    return out


def test_no_package_imports_across_the_rule():
    assert violations(ROOT) == []


def test_the_check_finds_a_violation_and_names_the_file_and_the_import(tmp_path: Path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "pipeline" / "probe.py").write_text("def f():\n    from trainer.lm_scores import probe\n")
    (tmp_path / "trainer" / "ok.py").write_text("import scoring.models\nfrom schemas import Manifest\n")
    assert violations(tmp_path) == [
        "pipeline/probe.py:2 imports trainer.lm_scores (pipeline may import only pipeline, schemas, scoring)"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_is_on_disk(package: str):
    assert (ROOT / package).is_dir()


def test_the_image_and_the_package_hold_every_package():
    """A package missing from pyproject's list or the Dockerfile's COPYs installs a broken Beacon."""
    import re

    installed = re.search(r"include = \[([^\]]*)\]", (ROOT / "pyproject.toml").read_text()).group(1)
    copied = set(re.findall(r"^COPY (\w+) \1$", (ROOT / "Dockerfile").read_text(), flags=re.M))
    for package in PACKAGES:
        if package == "bench":
            continue
        assert f'"{package}*"' in installed, f"pyproject.toml does not install {package}/"
        assert package in copied, f"the Dockerfile does not copy {package}/"


def test_no_bench_script_shadows_a_package():
    """bench/ goes on sys.path (its scripts import each other, its tests import them): a bench/service.py
    there made ``import service`` find the script, and every later test of the service failed to collect."""
    scripts = {path.stem for path in (ROOT / "bench").glob("*.py")}
    assert not scripts & set(PACKAGES), f"bench/ scripts named like packages: {sorted(scripts & set(PACKAGES))}"
