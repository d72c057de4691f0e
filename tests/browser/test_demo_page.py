"""The demo page, in a real browser, against the real deployment: progress arrives live."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Deployment

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

#: how long the page may take to show an outcome (jobs here take a few seconds at most)
OUTCOME_TIMEOUT = 20_000  # ms, Playwright's unit

# Records every change of a job row's progress value and status, so a test can
# assert on the whole sequence instead of sampling the bar and hoping.
RECORDER = """
window.__layerqSeen = [];
new MutationObserver((mutations) => {
  for (const m of mutations) {
    const row = m.target.closest && m.target.closest("tr.job");
    if (!row) continue;
    const entry = {job: row.dataset.jobId, attribute: m.attributeName};
    entry.value = m.target.getAttribute(m.attributeName);
    window.__layerqSeen.push(entry);
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["value", "data-status"]});
"""


def open_demo(page: Any, deployment: Deployment) -> None:
    """Open the page with the recorder installed and wait for its websocket."""
    from playwright.sync_api import expect

    page.add_init_script(RECORDER)
    page.goto(deployment.url + "/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")


def submit(page: Any, button: str, steps: int, pause: float) -> Any:
    """Submit a job with the page's form; the locator of its (new, topmost) row."""
    page.fill("input[name=steps]", str(steps))
    page.fill("input[name=pause]", str(pause))
    rows_before = page.locator("tr.job").count()
    page.click(button)
    page.locator("tr.job").nth(rows_before).wait_for()
    return page.locator("tr.job").first


def seen(page: Any, job_id: str, attribute: str) -> list[str | None]:
    """The recorded values of ``attribute`` on the row of ``job_id``, in order."""
    entries = page.evaluate("window.__layerqSeen")
    return [e["value"] for e in entries if e["job"] == job_id and e["attribute"] == attribute]


def test_slow_job_progress_moves_live_to_the_end(page: Any, deployment: Deployment) -> None:
    """A submitted job's bar passes through intermediate values, reaches max, shows the result."""
    from playwright.sync_api import expect

    open_demo(page, deployment)

    row = submit(page, "#submit-render", steps=6, pause=0.25)

    expect(row.locator(".layerq-job")).to_have_attribute(
        "data-status", "succeeded", timeout=OUTCOME_TIMEOUT
    )
    bar = row.locator("progress")
    expect(bar).to_have_attribute("value", "1")
    assert bar.evaluate("el => el.value === el.max")
    expect(row.locator(".layerq-status")).to_have_text("succeeded")
    expect(row.locator(".job-outcome")).to_contain_text('"frames": 6')
    job_id = row.get_attribute("data-job-id")
    values = [float(v) for v in seen(page, job_id, "value") if v is not None]
    intermediate = {v for v in values if 0 < v < 1}
    assert len(intermediate) >= 3, f"the bar jumped instead of moving: {values}"
    assert values == sorted(values), f"the bar went backwards: {values}"
    assert values[-1] == 1.0
    statuses = seen(page, job_id, "data-status")
    assert "running" in statuses, statuses
    assert statuses[-1] == "succeeded", statuses


def test_failing_job_shows_retry_then_failure(page: Any, deployment: Deployment) -> None:
    """A job that raises is shown retrying, then failed with its error, its bar short of max."""
    from playwright.sync_api import expect

    open_demo(page, deployment)

    row = submit(page, "#submit-explode", steps=6, pause=0.1)

    expect(row.locator(".layerq-job")).to_have_attribute(
        "data-status", "failed", timeout=OUTCOME_TIMEOUT
    )
    message = "RendererFire: the renderer caught fire at step 3"
    expect(row.locator(".job-outcome")).to_have_text(message)
    expect(row.locator(".layerq-status")).to_have_text(f"failed: {message}")
    assert row.locator("progress").evaluate("el => el.value < el.max")
    statuses = seen(page, row.get_attribute("data-job-id"), "data-status")
    assert "retrying" in statuses, statuses
    assert statuses.index("retrying") < statuses.index("failed"), statuses


def test_finished_job_is_shown_again_after_a_reload(page: Any, deployment: Deployment) -> None:
    """After a reload the page rebuilds a finished job's row from its record, result included."""
    from playwright.sync_api import expect

    open_demo(page, deployment)
    row = submit(page, "#submit-render", steps=2, pause=0.05)
    expect(row.locator(".layerq-job")).to_have_attribute(
        "data-status", "succeeded", timeout=OUTCOME_TIMEOUT
    )
    job_id = row.get_attribute("data-job-id")

    page.reload()

    again = page.locator(f'tr.job[data-job-id="{job_id}"]')
    expect(again.locator(".layerq-job")).to_have_attribute("data-status", "succeeded")
    expect(again.locator("progress")).to_have_attribute("value", "1")
    expect(again.locator(".job-outcome")).to_contain_text('"frames": 2')
