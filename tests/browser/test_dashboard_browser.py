"""The dashboard in Debian's chromium driven by Playwright: live rows, cancel, the polling
fallback and the way back to live, catching up when the page comes back into view, the form,
a token switch, the owner column, the keyboard.

Each test has its own user on the session's stack, so it sees only its own jobs.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
from playwright.async_api import Page, Request, expect

from tests.browser.helpers import SET_VISIBILITY, Stack, abort_event_streams, sign_in, user

pytestmark = [pytest.mark.timeout(90), pytest.mark.asyncio(loop_scope="session")]

RECORD_STEPS = """() => {
    window.steps = [];
    new MutationObserver(() => {
        const text = document.querySelector("#jobs tr .message")?.textContent;
        if (text && text !== window.steps.at(-1)) window.steps.push(text);
    }).observe(document.getElementById("jobs"), { childList: true, subtree: true });
}"""


async def test_dashboard_creates_a_job_and_shows_it_live(page: Page, stack: Stack) -> None:
    await sign_in(page, stack, user())
    await expect(page.locator("#mode")).to_have_text("live")
    # The form starts on the demo that shows progress (not on demo.fail, the first by name).
    await expect(page.locator("#task-type")).to_have_value("demo.sleep")
    await expect(page.locator("#task-input")).to_have_value('{"seconds":1,"steps":10}')
    await page.fill("#task-input", '{"seconds": 2, "steps": 8}')
    await page.evaluate(RECORD_STEPS)
    await page.click("#create")
    row = page.locator("#jobs tr")
    await expect(row).to_have_count(1)
    await expect(page.locator("#keeps-running")).to_be_visible()  # while a job is active
    await expect(row.locator(".status")).to_have_text("SUCCESS")
    await expect(page.locator("#keeps-running")).to_be_hidden()
    # The steps in between were pushed over SSE as they happened; the page never reloaded.
    steps = await page.evaluate("window.steps")
    assert len(steps) >= 4, steps
    assert steps[-1] == "step 8 of 8"
    await expect(row.locator(".progress")).to_have_text("100%")
    await expect(row.locator(".times")).to_contain_text("took 2s")
    await row.locator(".id button").click()
    await expect(page.locator("#details-body")).to_contain_text('"slept": 2')


async def test_dashboard_sees_jobs_created_elsewhere_and_cancels_them(page: Page, stack: Stack) -> None:
    name = user()
    await sign_in(page, stack, name)
    await expect(page.locator("#mode")).to_have_text("live")
    job = await stack.create(name, "demo.sleep", {"seconds": 30, "steps": 30})
    await stack.create(user(), "demo.noop", {})  # someone else's job: never shown
    row = page.locator(f'#jobs tr[data-id="{job["id"]}"]')
    await expect(row.locator(".status")).to_have_text("PROCESSING")
    await row.locator("button.cancel").click()
    await expect(row.locator(".status")).to_have_text("CANCELLED")
    await expect(page.locator("#jobs tr")).to_have_count(1)
    await expect(page.locator("th.owner")).to_be_hidden()  # one owner, not an admin


async def test_dashboard_falls_back_to_polling_and_returns_to_live(page: Page, stack: Stack) -> None:
    name = user()
    done = await stack.create(name, "demo.noop", {})
    await abort_event_streams(page)
    await sign_in(page, stack, name)
    await expect(page.locator("#mode")).to_have_text("polling")
    await expect(page.locator(f'#jobs tr[data-id="{done["id"]}"] .status')).to_have_text("SUCCESS")

    await page.unroute("**/events**")  # SSE works again: the page's next try finds it
    await expect(page.locator("#mode")).to_have_text("live")
    listings: list[str] = []

    def on_request(request: Request) -> None:
        if "/jobs?" in request.url:
            listings.append(request.url)

    page.on("request", on_request)
    # A job that runs longer than a poll's interval (2 s): a poll loop still running would list.
    job = await stack.create(name, "demo.sleep", {"seconds": 2.5, "steps": 5})
    await expect(page.locator(f'#jobs tr[data-id="{job["id"]}"] .status')).to_have_text("SUCCESS")
    assert listings == []  # live again: polling stopped


async def test_dashboard_catches_up_when_it_comes_back_into_view(page: Page, stack: Stack) -> None:
    await sign_in(page, stack, user())
    await expect(page.locator("#mode")).to_have_text("live")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(urlparse(request.url).path))
    await page.evaluate(SET_VISIBILITY, True)
    assert requests == []  # going out of view asks for nothing
    async with page.expect_response(lambda response: "/jobs?" in response.url) as listed:
        await page.evaluate(SET_VISIBILITY, False)
    assert (await listed.value).status == 200
    assert requests[0] == "/jobs"  # the catch-up came first, and at once (no poll runs while live)
    await expect(page.locator("#mode")).to_have_text("live")


async def test_dashboard_shows_a_refused_input(page: Page, stack: Stack) -> None:
    await sign_in(page, stack, user())
    await page.select_option("#task-type", "demo.sleep")
    await page.fill("#task-input", '{"seconds": -1}')
    await page.click("#create")
    await expect(page.locator("#create-error")).to_contain_text("seconds")
    await page.fill("#task-input", "{not json")
    await page.click("#create")
    await expect(page.locator("#create-error")).to_have_text("The input is not valid JSON.")
    await expect(page.locator("#jobs tr")).to_have_count(0)


async def test_a_new_token_clears_what_the_previous_user_saw(page: Page, stack: Stack) -> None:
    first, second = user(), user()
    job = await stack.create(first, "demo.noop", {})
    await sign_in(page, stack, first)
    await expect(page.locator(f'#jobs tr[data-id="{job["id"]}"] .status')).to_have_text("SUCCESS")
    await page.locator(f'#jobs tr[data-id="{job["id"]}"] .id button').click()
    await expect(page.locator("#details")).to_be_visible()

    await page.fill("#token", stack.token(second))
    await page.click("#token-form button")
    await expect(page.locator("#mode")).to_have_text("live")
    await expect(page.locator("#jobs tr")).to_have_count(0)
    await expect(page.locator("#empty")).to_be_visible()
    await expect(page.locator("#details")).to_be_hidden()
    await expect(page.locator("#counts")).to_have_text("")
    theirs = await stack.create(second, "demo.noop", {})
    await expect(page.locator(f'#jobs tr[data-id="{theirs["id"]}"] .status')).to_have_text("SUCCESS")
    await expect(page.locator("#jobs tr")).to_have_count(1)


async def test_an_admin_sees_the_owner_column(page: Page, stack: Stack) -> None:
    name = user()
    job = await stack.create(name, "demo.noop", {})
    await sign_in(page, stack, name, admin=True)
    row = page.locator(f'#jobs tr[data-id="{job["id"]}"]')
    await expect(row.locator(".status")).to_have_text("SUCCESS")
    await expect(page.locator("th.owner")).to_be_visible()
    await expect(row.locator("td.owner")).to_have_text(name, use_inner_text=True)


async def test_the_dashboard_works_from_the_keyboard(page: Page, stack: Stack) -> None:
    await sign_in(page, stack, user())
    await expect(page.locator("#task-type")).to_have_value("demo.sleep")
    await page.fill("#task-input", '{"seconds": 20, "steps": 40}')

    async def tab_to(selector: str) -> None:
        for _ in range(30):
            await page.keyboard.press("Tab")
            if await page.evaluate("(s) => document.activeElement.matches(s)", selector):
                return
        raise AssertionError(f"Tab never reached {selector}")

    await tab_to("#create")
    outline = await page.evaluate(
        "() => [getComputedStyle(document.activeElement).outlineStyle, "
        "getComputedStyle(document.activeElement).outlineWidth]"
    )
    assert outline == ["solid", "3px"], outline  # the focus is visible
    await page.keyboard.press("Enter")
    row = page.locator("#jobs tr")
    await expect(row.locator(".status")).to_have_text("PROCESSING")
    await tab_to("#jobs tr button.cancel")
    # The row is redrawn on every step; the focus stays on its cancel button.
    step = await row.locator(".message").text_content()
    await expect(row.locator(".message")).not_to_have_text(step or "")
    await expect(row.locator("button.cancel")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(row.locator(".status")).to_have_text("CANCELLED")
    await expect(row.locator(".id button")).to_be_focused()  # the cancel button went
    await page.keyboard.press("Enter")
    await expect(page.locator("#details")).to_be_visible()
    await expect(page.locator("#details-title")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.locator("#details")).to_be_hidden()
    await expect(row.locator(".id button")).to_be_focused()
