"""bench/risk.py: fitting the risk model, and scoring the shipped coefficients without a fit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "bench"))

import risk as bench_risk  # noqa: E402
from knowledge import auc  # noqa: E402

from scoring.risk import features, risk  # noqa: E402

# Facts as (target_rank, shared_target), and per seed which of them plain did *not* learn.
FACTS = [(2, 0), (40, 0), (900, 0), (30_000, 0), (5, 3), (700, 1), (12_000, 2), (60, 0)]
NOT_LEARNED = np.asarray([[0, 0, 1, 1, 0, 0, 1, 1], [0, 1, 1, 1, 0, 0, 0, 0]], dtype=float)


@pytest.fixture
def folders(monkeypatch, tmp_path: Path) -> dict[str, Path]:
    x = np.asarray([features(r, s) for r, s in FACTS])
    monkeypatch.setattr(bench_risk, "outcomes", lambda folder: (x, NOT_LEARNED, 40, 0.55))
    return {"fit": tmp_path / "fit", "other": tmp_path / "other"}


def test_without_fit_the_shipped_coefficients_are_scored(folders, capsys):
    folders["other"].mkdir()
    assert bench_risk.main(["--validate", str(folders["other"])]) == 0
    written = json.loads((folders["other"] / "risk.json").read_text())
    assert written["fit"] is None and written["coefficients"]["source"].startswith("scoring/risk.py")
    shipped = [risk(r, s) for r, s in FACTS]
    expected = [auc(np.asarray(shipped), row) for row in NOT_LEARNED]
    assert written["validate"][0]["risk_auc"]["mean"] == pytest.approx(np.mean(expected))


def test_a_fit_writes_its_own_coefficients_into_the_fit_folder(folders):
    folders["fit"].mkdir()
    assert bench_risk.main(["--fit", str(folders["fit"])]) == 0
    written = json.loads((folders["fit"] / "risk.json").read_text())
    assert written["fit"]["step"] == 40 and "source" not in written["coefficients"]
    assert written["coefficients"]["log_target_rank"] > 0  # far-down targets are the unlearned ones here


def test_neither_fit_nor_validate_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_risk.main([])
    assert exc.value.code == 2 and "--fit FOLDER" in capsys.readouterr().err
