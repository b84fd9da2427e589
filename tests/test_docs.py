"""The README documents what the code does: every config key and flag, and the two commands."""

import re
from pathlib import Path

from pipeline.config import CurateConfig

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_every_curate_key_and_flag_is_documented():
    documented = set(re.findall(r"^\| `([a-z_]+)` \| `--([a-z-]+)", README, flags=re.M))
    expected = {(name, name.replace("_", "-")) for name in CurateConfig.model_fields}
    assert expected <= documented, sorted(expected - documented)


def test_ci_calls_the_readme_test_command():
    assert "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: setup", makefile, flags=re.M) and re.search(r"^test: setup", makefile, flags=re.M)
