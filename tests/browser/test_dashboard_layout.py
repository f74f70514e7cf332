"""The dashboard at phone width (390 px) and desktop width, with a job in every state: no
sideways scroll, cards on the phone, dates with times, clocks that run, an axe-core audit
with no serious or critical violation, and screenshots (``tests/browser/artifacts/``) for
people to look at.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Page, expect

from tests.browser.helpers import Stack, sign_in, user

pytestmark = [pytest.mark.timeout(90), pytest.mark.asyncio(loop_scope="session")]

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
LONG_WORDS = "checksum_" + "0123456789abcdef" * 5
"""A word with no place to break a line (a digest in an error message), wider than a phone."""


async def jobs_in_every_state(stack: Stack, name: str) -> dict[str, dict[str, Any]]:
    labels = {"case": "42", "customer": "a_customer_name_long_enough_to_need_wrapping_on_a_phone"}
    jobs = {
        "PENDING": await stack.create(name, "demo.noop", {}, delay_seconds=3600, labels=labels),
        "PROCESSING": await stack.create(name, "demo.sleep", {"seconds": 60, "steps": 600}),
        "SUCCESS": await stack.create(name, "demo.wordcount", {"text": "the cat and the hat"}),
        "FAILURE": await stack.create(name, "demo.fail", {"message": f"On fire: {LONG_WORDS}"}),
        "CANCELLED": await stack.create(name, "demo.sleep", {"seconds": 60}, delay_seconds=3600),
    }
    await stack.cancel(name, jobs["CANCELLED"]["id"])
    return jobs


async def audit(page: Page, tools: Path) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is (every rule axe runs by default)."""
    if not await page.evaluate("typeof axe !== 'undefined'"):
        await page.evaluate((tools / "node_modules/axe-core/axe.min.js").read_text())
    violations: list[dict[str, Any]] = await page.evaluate(
        """async () => (await axe.run(document)).violations.map((v) => ({
            id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")),
        }))"""
    )
    return violations


def serious(violations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [violation for violation in violations if violation["impact"] in {"serious", "critical"}]


async def page_width(page: Page) -> int:
    width: int = await page.evaluate(
        "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
    )
    return width


@pytest_asyncio.fixture(loop_scope="session")
async def dashboard(page: Page, stack: Stack) -> AsyncIterator[dict[str, dict[str, Any]]]:
    """The page signed in as a user of its own whose jobs show in every state."""
    name = user()
    jobs = await jobs_in_every_state(stack, name)
    await page.set_viewport_size(PHONE)
    await sign_in(page, stack, name)
    for status, job in jobs.items():
        await expect(page.locator(f'#jobs tr[data-id="{job["id"]}"] .status')).to_have_text(status)
    running = page.locator(f'#jobs tr[data-id="{jobs["PROCESSING"]["id"]}"]')
    await expect(running.locator(".eta-left")).to_have_count(1)  # the rate gives an ETA after a few steps
    yield jobs
    await stack.cancel(name, jobs["PROCESSING"]["id"])


async def test_the_dashboard_fits_a_phone(
    page: Page, dashboard: dict[str, dict[str, Any]], artifacts: Path, tools: Path
) -> None:
    row = {status: page.locator(f'#jobs tr[data-id="{job["id"]}"]') for status, job in dashboard.items()}
    assert await page_width(page) <= PHONE["width"]
    assert await row["SUCCESS"].evaluate("(tr) => getComputedStyle(tr).display") == "grid"  # a card
    # Dates with times; the scheduled start of a delayed job; a running job's clock and ETA.
    created = row["SUCCESS"].locator(".times time").first
    assert await created.get_attribute("datetime") == dashboard["SUCCESS"]["created_at"]
    assert re.search(r"\d{4}.*\d{1,2}:\d{2}:\d{2}", await created.inner_text()), await created.inner_text()
    await expect(row["PENDING"].locator(".times")).to_contain_text("Scheduled for")
    await expect(row["PENDING"].locator(".labels li")).to_have_count(2)
    await expect(row["PROCESSING"].locator(".times")).to_contain_text("Running for")
    elapsed = await row["PROCESSING"].locator(".elapsed").inner_text()
    await expect(row["PROCESSING"].locator(".elapsed")).not_to_have_text(elapsed)  # it runs
    await expect(row["PROCESSING"].locator(".eta")).to_contain_text("ETA")
    await expect(row["FAILURE"].locator(".message")).to_contain_text("DemoFailure: On fire: checksum_")
    await expect(page.locator("#keeps-running")).to_be_visible()
    await page.screenshot(path=artifacts / "dashboard-phone.png", full_page=True)

    await row["FAILURE"].locator(".id button").click()
    await expect(page.locator("#details-body")).to_contain_text(LONG_WORDS)
    assert await page_width(page) <= PHONE["width"]
    await page.screenshot(path=artifacts / "dashboard-phone-details.png", full_page=True)
    assert serious(await audit(page, tools)) == []


async def test_the_dashboard_on_a_desktop_passes_an_accessibility_audit(
    page: Page, dashboard: dict[str, dict[str, Any]], artifacts: Path, tools: Path
) -> None:
    await page.set_viewport_size(DESKTOP)
    first = page.locator("#jobs tr").first
    assert await first.evaluate("(tr) => getComputedStyle(tr).display") == "table-row"
    assert await page_width(page) <= DESKTOP["width"]
    violations = await audit(page, tools)
    await page.screenshot(path=artifacts / "dashboard-desktop.png", full_page=True)
    assert serious(violations) == [], violations
    assert violations == [], violations  # none of a lesser impact either
