"""The horizon measurements' report, rebuilt from the committed results: the note's numbers
are the stored transfers' and the fits of the stored trials."""

from __future__ import annotations

import json
import math
import re

import pytest

from benchmarks.check_fits import best_loss, loss_at, loss_gap
from benchmarks.horizon_report import MEASUREMENTS, RESULTS, load, main


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs")
    main(["--out", str(out)])
    return out


@pytest.mark.parametrize("name", MEASUREMENTS)
def test_the_report_rebuilds_from_the_committed_results(report, name):
    text = (report / "HORIZON.md").read_text().split(f"## `{name}`")[1].split("## `")[0]
    assert (report / "experiments" / f"{name}.png").stat().st_size > 10_000
    stored = json.loads((RESULTS / name / "transfer_to_tokens.json").read_text())["result"]
    plain = json.loads((RESULTS / name / "transfer_longest.json").read_text())["result"]
    moved = re.search(r"\| moved by the horizon fit \| 2\^(-?[\d.]+) \|", text)
    kept = re.search(r"\| the longest horizon's optimum, not moved \| 2\^(-?[\d.]+) \|", text)
    assert moved and kept
    assert float(moved[1]) == round(math.log2(stored["base_lr"]), 2)
    assert float(kept[1]) == round(math.log2(plain["base_lr"]), 2)
    # the move is the horizon fit's shift, from the longest horizon's own transfer
    shift = math.log2(stored["base_lr"] / plain["base_lr"])
    assert math.isclose(shift, stored["horizon"]["log2_shift"], rel_tol=1e-9)
    assert f"D^({stored['horizon']['slope']:+.2f} ±" in text


def test_a_loss_gap_is_against_the_best_of_the_same_curve():
    check = load(RESULTS / "horizon_long").check
    xs = [math.log2(lr) for lr, _ in check.curve]
    assert min(loss for _, loss in check.curve) >= best_loss(check) - 1e-9
    assert all(loss_gap(check, x) >= 0 for x in xs)
    # on a measured point the curve passes through the measurement
    assert math.isclose(loss_at(check, xs[2]), check.curve[2][1], rel_tol=1e-9)
