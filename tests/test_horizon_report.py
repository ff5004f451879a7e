"""The horizon measurement's report, rebuilt from the committed results: the note's numbers
are the stored transfers' and the fits of the stored trials."""

from __future__ import annotations

import json
import math
import re

from benchmarks.horizon_report import RESULTS, main


def test_the_report_rebuilds_from_the_committed_results(tmp_path):
    main(["--out", str(tmp_path)])
    text = (tmp_path / "HORIZON.md").read_text()
    assert (tmp_path / "experiments" / "horizon.png").stat().st_size > 10_000
    stored = json.loads((RESULTS / "transfer_to_tokens.json").read_text())["result"]
    plain = json.loads((RESULTS / "transfer_longest.json").read_text())["result"]
    moved = re.search(r"\| moved by the horizon fit \| 2\^(-?[\d.]+) \|", text)
    kept = re.search(r"\| the longest horizon's optimum, not moved \| 2\^(-?[\d.]+) \|", text)
    assert moved and kept
    assert float(moved[1]) == round(math.log2(stored["base_lr"]), 2)
    assert float(kept[1]) == round(math.log2(plain["base_lr"]), 2)
    # the move is the horizon fit's shift, from the longest horizon's own transfer
    shift = math.log2(stored["base_lr"] / plain["base_lr"])
    assert math.isclose(shift, stored["horizon"]["log2_shift"], rel_tol=1e-9)
    assert f"D^({stored['horizon']['slope']:+.2f} ±" in text
