"""Fixtures of the trainer's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_fixtures import scored_rows, write_dataset


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "dataset", scored_rows())
