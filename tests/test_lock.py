"""`make setup` installs exactly the versions in requirements.lock (written by `make lock`)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).parents[1]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[_canonical(match.group(1))] = match.group(2)
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_pins_every_dependency_and_the_cpu_torch():
    pins = locked()
    assert pins["torch"] == "2.13.0+cpu" and not any(name.startswith("nvidia-") for name in pins)
    for name in ("apache-beam", "duckdb", "transformers", "peft", "fastapi", "datasets", "pytest", "trl"):
        assert name in pins, name


def test_every_locked_package_is_installed_at_its_locked_version():
    wrong = {}
    for name, version in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"locked -> installed: {wrong}; run `make setup`"
