"""The comparison view in Debian's chromium (Playwright): proxies of two parametrizations,
transferred to a target, and the LR sweep that checks each transfer there, recorded in a real
SQLite file and served on loopback as the proof's report serves them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from benchmarks.proof_report import CHROMIUM, COMPARE_DRAWN, chromium, serve
from sweeper import service

LRS = {"lr": {"min": 2**-8, "max": 2**0, "points": 9}, "wd": [0.0]}


def _traces(page: Any, plot: str) -> list[dict[str, Any]]:
    return page.evaluate(
        f"""() => document.getElementById({plot!r}).data.map((t) => ({{
            kind: t.meta.kind, sweep: t.meta.sweep, width: t.meta.width ?? null,
            x: t.x, n: t.y.filter((y) => y !== null).length }}))"""
    )


@pytest.fixture
def page() -> Any:
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"no system chromium at {CHROMIUM} (apt-get install chromium)")
    with chromium() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        assert not errors, errors


def test_the_comparison_view_lines_up_proxies_transfers_and_checks(
    env, database, make_spec, record, page
):
    def spec(name: str, parametrization: str, **overrides: Any) -> dict[str, Any]:
        base = make_spec(name=name, search=LRS, **overrides)
        model = base["train"]["model"] | {"parametrization": parametrization}
        return base | {"train": base["train"] | {"model": model}}

    mus = record(spec("mus proxies", "mus"), diverge_above=0.5)
    sp = record(spec("sp proxies", "sp"))
    for proxies in (mus, sp):
        service.transfer(database, sweep_id=proxies, to_width=256)
        service.transfer(database, sweep_id=proxies, to_width=512)
    mus_check = record(spec("mus check", "mus", widths=[256]))
    sp_check = record(spec("sp check", "sp", widths=[512]))
    ids = [mus, sp, mus_check, sp_check]

    with serve(env["SWEEPER_DB_URL"]) as url:
        # The sweeps list picks the sweeps to compare.
        page.goto(f"{url}/#/")
        page.wait_for_selector(f"input.compare-pick[data-sweep-id='{mus}']")
        assert page.is_disabled("#compare-sweeps")
        for sweep_id in (sp_check, mus, sp, mus_check):
            page.check(f"input.compare-pick[data-sweep-id='{sweep_id}']")
        assert page.url.endswith("#/")  # a tick does not open the sweep
        page.click("#compare-sweeps")
        page.wait_for_url(f"**/#/compare/{','.join(map(str, sorted(ids)))}")
        page.wait_for_function(COMPARE_DRAWN, arg=len(ids))

        drift = _traces(page, "compare-drift")
        assert Counter((t["kind"], t["sweep"]) for t in drift) == {
            ("optima", mus): 1,
            ("drift-line", mus): 1,
            ("transferred", mus): 1,
            ("optima", sp): 1,
            ("drift-line", sp): 1,
            ("transferred", sp): 1,
            ("check-best", mus_check): 1,
            ("check-best", sp_check): 1,
        }
        by = {(t["kind"], t["sweep"]): t for t in drift}
        assert by[("optima", mus)]["x"] == [16, 32]
        assert by[("drift-line", sp)]["x"] == [16, 32, 256, 512]  # out to both targets
        assert by[("transferred", mus)]["x"] == [256, 512]
        assert by[("check-best", mus_check)]["x"] == [256]
        assert by[("check-best", sp_check)]["x"] == [512]

        # One LR-curve panel per sweep: a line per width, each width's optimum, and on a
        # check sweep the LR its family transferred to its width.
        curves = _traces(page, f"compare-lr-{mus}")
        assert [(t["kind"], t["width"], t["n"]) for t in curves] == [
            ("lr-curve", 16, 8),  # 2^0 diverged
            ("lr-curve", 32, 8),
            ("optimum", None, 2),
        ]
        check = _traces(page, f"compare-lr-{sp_check}")
        assert [(t["kind"], t["n"]) for t in check] == [
            ("lr-curve", 9),
            ("optimum", 1),
            ("transferred", 2),
        ]
        rows = page.locator("#compare-checks-table tbody tr").all_inner_texts()
        assert len(rows) == 2
        assert rows[0].startswith("256\tmus proxies") and rows[1].startswith("512\tsp proxies")
        assert "2^-4.00" in rows[0]  # the made-up curves' optimum, transferred and checked
        title = page.inner_text("#compare-title")
        assert all(name in title for name in ("mus proxies", "sp proxies", "mus check"))

        page.goto(f"{url}/#/compare/{mus},999")
        page.wait_for_function("() => document.getElementById('banner').textContent !== ''")
        assert "sweep 999 not found" in page.inner_text("#banner")
