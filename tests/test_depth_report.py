"""The depth measurement's report, rebuilt from the committed results: each rule's row holds
its stored transfer and the fit of its stored check sweep."""

from __future__ import annotations

import math
import re

import pytest

from benchmarks.check_fits import loss_gap
from benchmarks.depth_report import RESULTS, RULES, load, main


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs")
    main(["--out", str(out)])
    return out


@pytest.mark.parametrize("rule", RULES)
def test_each_rules_row_is_its_stored_transfer_against_its_check(report, rule):
    assert (report / "experiments" / "depth.png").stat().st_size > 10_000
    m = load(RESULTS, rule)
    row = re.search(rf"^\| `{rule}` \|(.*)\|$", (report / "DEPTH.md").read_text(), re.M)
    assert row
    cells = [c.strip() for c in row[1].split("|")]
    drift = m.transfer["depth_drift"]
    assert cells[1] == f"{drift['slope']:+.2f} ± {drift['uncertainty']:.2f}"
    transferred = math.log2(m.transfer["base_lr"])
    assert cells[2] == f"2^{transferred:.2f}"
    assert cells[3] == f"2^{math.log2(m.check.lr.value):.2f}"
    assert cells[5] == f"{loss_gap(m.check, transferred):+.2%}"
    assert m.transfer["to_depth"] == m.check_depth == 12
    # the proxies' depths are the ones the transfer pooled its depth drift over
    assert sorted(m.proxies) == [d["depth"] for d in m.transfer["depths"]] == [2, 4]


def test_without_a_rule_the_transfer_warns_and_lands_far_off():
    m = load(RESULTS, "none")
    assert any("no depth rule" in w for w in m.transfer["warnings"])
    assert abs(math.log2(m.transfer["base_lr"] / m.check.lr.value)) > 1
