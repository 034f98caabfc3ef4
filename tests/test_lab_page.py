"""The lab page (decision 0015 §5) in Debian's Chromium, headless, driven by Playwright.

The browser is Debian's ``/usr/bin/chromium`` (no browser download): without it these tests skip
(``.ci/run`` installs it). Screenshots go to ``test-artifacts/lab-page-*.png``. Sync Playwright runs in
a worker thread (it needs a thread with no event loop); the lab stays in the test's trio loop.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import awen

from .test_web import web_lab

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000

DRIFT_DAY = """() => {
    const state = structuredClone(latest);
    state.calibration.drift = Array.from({length: 24}, (_, i) => [state.time - (23 - i) * 3600, 0.995 - 0.0004 * i]);
    render(state);
}"""
"""Run in the page: its last state (``latest``) drawn again with 24 hourly drift checks, fidelity falling."""


def _need_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")


def _progress(page: Any) -> int:
    """The running job's progress bar's value (shots done), waiting for the bar to show one above 0."""
    bar = page.get_by_test_id("running-progress")
    page.wait_for_function(
        "() => { const b = document.querySelector('[data-testid=running-progress]'); return b && b.value > 0 }",
        timeout=TIMEOUT_MS,
    )
    return int(bar.evaluate("b => b.value"))


def _drive(base: str, door: str, profile: Path, notes: dict[str, Any], lab_done: threading.Event) -> None:
    """What a person at the page sees, step by step; ``notes`` gathers what the test reports."""
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/")

            # The header names the lab and says the stream is live; the device shows its mesh.
            expect(page.get_by_test_id("lab-name")).to_have_text("test-lab", timeout=TIMEOUT_MS)
            expect(page.get_by_test_id("connection")).to_have_text("live")
            mesh = page.get_by_test_id("mesh")
            expect(mesh).to_have_count(1)
            assert mesh.get_attribute("data-layout") == "clements"
            expect(mesh.get_by_test_id("heater")).to_have_count(16)  # 4 modes: 12 MZI heaters, 4 output phases
            assert "V" in (mesh.locator("title").first.text_content() or "")
            expect(page.get_by_test_id("calibration-status")).to_have_text("valid")
            page.screenshot(path=str(ARTIFACTS / "lab-page-idle.png"), full_page=True)

            # A long job: the progress bar moves while it runs.
            with awen.connect(door) as lab:
                job = lab.submit(str(ROOT / "examples" / "hom.json"), shots=1_000_000, tags=["page"])
            notes["job"] = job.id
            expect(page.get_by_test_id("running-job")).to_have_text(job.id, timeout=TIMEOUT_MS)
            first = _progress(page)
            page.wait_for_function(
                f"() => document.querySelector('[data-testid=running-progress]')?.value > {first}", timeout=TIMEOUT_MS
            )
            second = _progress(page)
            assert second > first
            notes["progress"] = (first, second)
            expect(page.get_by_test_id("running-eta")).not_to_have_text("\u2013")  # an en dash: no estimate
            page.screenshot(path=str(ARTIFACTS / "lab-page-running.png"), full_page=True)

            # It ends up in the recent jobs, completed; choosing it draws its histogram: HOM's 01 and 10.
            row = page.locator(f'[data-testid=recent-row][data-job="{job.id}"]')
            expect(row).to_have_attribute("data-state", "completed", timeout=120_000)
            expect(page.get_by_test_id("running")).to_contain_text("Nothing is running")
            row.click()
            histogram = page.get_by_test_id("histogram")
            expect(histogram.get_by_test_id("histogram-svg")).to_have_count(2)  # registers hom and reference
            hom = histogram.get_by_test_id("histogram-svg").first
            bars = {b.get_attribute("data-pattern"): int(b.get_attribute("data-count") or 0)
                    for b in hom.get_by_test_id("histogram-bar").all()}  # fmt: skip
            assert {"01", "10"} <= set(bars), bars
            assert bars["01"] + bars["10"] > 10 * bars.get("11", 0), bars  # two photons bunch: few coincidences
            notes["bars"] = bars
            expect(row).to_have_class("chosen")

            # The drift plot is drawn, with or without points (a fresh lab has run no drift check yet).
            drift = page.get_by_test_id("drift-plot")
            expect(drift).to_have_count(1)
            notes["drift_points"] = int(drift.get_attribute("data-points") or 0)
            page.screenshot(path=str(ARTIFACTS / "lab-page-histogram.png"), full_page=True)

            # The lab stops: the page says it is disconnected (EventSource keeps trying by itself).
            notes["page_done"]()
            assert lab_done.wait(60), "the lab did not stop"
            expect(page.get_by_test_id("connection")).to_have_text("disconnected", timeout=TIMEOUT_MS)
            page.screenshot(path=str(ARTIFACTS / "lab-page-disconnected.png"), full_page=True)

            # No more events come: the page's last state, with a day of drift checks, draws their line.
            page.evaluate(DRIFT_DAY)
            expect(drift).to_have_attribute("data-points", "24")
            expect(drift.locator("circle")).to_have_count(24)
            expect(drift.locator("polyline")).to_have_count(1)
            expect(drift).to_contain_text("fidelity")
            drift.screenshot(path=str(ARTIFACTS / "lab-page-drift.png"))
            assert not errors, errors
        finally:
            context.close()


async def test_lab_page_shows_the_lab_live(tmp_path: Path) -> None:
    _need_chromium()
    pytest.importorskip("playwright.sync_api")
    started = time.monotonic()
    page_done = trio.Event()
    lab_done = threading.Event()
    token = trio.lowlevel.current_trio_token()
    notes: dict[str, Any] = {"page_done": lambda: trio.from_thread.run_sync(page_done.set, trio_token=token)}
    try:
        async with trio.open_nursery() as nursery:
            async with web_lab(tmp_path) as (_sup, base):
                door = f"ipc://{tmp_path}/awen.sock"
                nursery.start_soon(
                    trio.to_thread.run_sync, _drive, base, door, tmp_path / "chromium-profile", notes, lab_done
                )
                with trio.fail_after(240):
                    await page_done.wait()
            lab_done.set()
    finally:
        lab_done.set()
    print(f"lab page: {notes.get('progress')} shots seen, bars {notes.get('bars')}, "
          f"{notes.get('drift_points')} drift points, {time.monotonic() - started:.1f} s")  # fmt: skip
