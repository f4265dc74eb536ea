"""The portal in a real browser: Debian's Chromium driven by Playwright, against ``serve --dev``.

One ``sentinmail serve --dev`` for the module (on the session's Ray), real
HTTPS receivers on loopback, and a fresh browser context (no cookie) per
test. Every page visited is checked with axe-core: no serious or critical
violation. Each page's screenshot is taken; with
``SENTINMAIL_PORTAL_SCREENSHOTS=docs/portal`` they are kept there (the README
links them).

Chromium comes from Debian (``apt-get install -y chromium``; ``.ci/run``
installs it): never ``playwright install``, which downloads a browser.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.receivers import Receivers
from tests.test_serve_e2e import SENTINMAIL, serving

SCREENSHOTS = os.environ.get("SENTINMAIL_PORTAL_SCREENSHOTS")
SERIOUS = {"serious", "critical"}


class Portal:
    """The service under test: its URL, an account's key, and HTTP calls to its API."""

    def __init__(self, base: str, key: str, farm: Receivers, database_url: str) -> None:
        self.base = base
        self.key = key
        self.farm = farm
        self.database_url = database_url

    def api(self, method: str, path: str, body: object = None, key: str | None = None) -> Any:
        request = urllib.request.Request(
            self.base + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"X-API-Key": key or self.key, "Content-Type": "application/json"},
            method=method,
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return json.loads(raw) if raw else None

    def status(self, path: str) -> int:
        """The status a GET of the API's ``path`` answers."""
        try:
            self.api("GET", path)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code
        return 200

    def link(self, key: str | None = None) -> str:
        """A fresh single-use portal link, minted as SentinMail's dashboard does."""
        url: str = self.api("POST", "/api/emails/portal-sessions/", key=key)["url"]
        return url

    def new_key(self, account: str) -> str:
        """A key of another account (``sentinmail keys create``)."""
        result = subprocess.run(
            [str(SENTINMAIL), "keys", "create", "--account", account],
            env={**os.environ, "SENTINMAIL_DATABASE_URL": self.database_url},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def portal(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    tmp = tmp_path_factory.mktemp("portal")
    database_url = f"sqlite:///{tmp}/sentinmail.db"
    farm = Receivers(tmp)
    env = {
        "SENTINMAIL_CA_BUNDLE": str(farm.ca_file),
        # One attempt: a delivery to a failing receiver is `failed` at once, to be retried by hand.
        "SENTINMAIL_RETRY_SCHEDULE": "0",
    }
    ray_address = ("--ray-address", str(ray.get_runtime_context().gcs_address))
    try:
        with serving(database_url, "--dev", *ray_address, env=env, start_timeout=90) as (
            base,
            key,
            _,
        ):
            yield Portal(base, key, farm, database_url)
    finally:
        farm.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        yield launch(p)


def launch(p: Playwright) -> Browser:
    executable = shutil.which("chromium")
    assert executable, "the portal's browser tests need Chromium: apt-get install -y chromium"
    return p.chromium.launch(executable_path=executable, args=["--no-sandbox"])


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def check(page: Page, name: str, tmp_path: Path) -> None:
    """The page as it stands passes axe-core (no serious or critical violation); screenshot it."""
    results = Axe().run(page)
    serious = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in results.response["violations"]
        if v.get("impact") in SERIOUS
    ]
    assert not serious, f"{name}: " + "\n".join(serious)
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def enter(page: Page, portal: Portal, key: str | None = None) -> None:
    """Open a fresh link as a customer does: a click on a link on another site."""
    page.set_content(f'<a href="{portal.link(key)}">Webhooks</a>')
    page.click("text=Webhooks")
    expect(page.get_by_role("heading", name="Endpoints", exact=True)).to_be_visible()


# --- access -----------------------------------------------------------------------------


def test_a_link_opens_the_portal_once(page: Page, portal: Portal, tmp_path: Path) -> None:
    link = portal.link()
    # Opened from another site, as from SentinMail's dashboard: the strict cookie still holds.
    page.set_content(f'<a href="{link}">Webhooks</a>')
    page.click("text=Webhooks")
    expect(page.get_by_role("heading", name="Endpoints", exact=True)).to_be_visible()
    assert page.url == portal.base + "/portal/endpoints/"
    cookie = next(c for c in page.context.cookies() if c["name"] == "sentinmail_portal")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/portal")
    check(page, "endpoints-empty", tmp_path)

    # The link is spent: in another browser (no cookie) it opens nothing.
    other = page.context.browser
    assert other is not None
    stranger = other.new_context().new_page()
    stranger.goto(link)
    expect(stranger.get_by_role("heading", name="This link no longer works")).to_be_visible()
    check(stranger, "link-used", tmp_path)
    stranger.goto(portal.base + "/portal/endpoints/")
    expect(stranger.get_by_role("heading", name="Your portal session has ended")).to_be_visible()
    stranger.context.close()


def test_a_form_without_its_csrf_token_is_refused(
    page: Page, portal: Portal, tmp_path: Path
) -> None:
    enter(page, portal)
    # A forged form on another site, posted while the portal's session is open.
    page.set_content(
        f'<form method="post" action="{portal.base}/portal/endpoints/new/">'
        '<input name="url" value="http://127.0.0.1:9/evil"><input name="events" value="opened">'
        "<button>Win a prize</button></form>"
    )
    page.click("text=Win a prize")
    expect(page.get_by_role("heading", name="This form was refused")).to_be_visible()
    check(page, "csrf-refused", tmp_path)
    # The portal's own form, stripped of its token.
    page.goto(portal.base + "/portal/endpoints/new/")
    page.fill("#url", "http://127.0.0.1:9/evil")
    page.locator("#main input[name=csrf_token]").evaluate("input => input.remove()")
    page.click("text=Create endpoint")
    expect(page.get_by_role("heading", name="This form was refused")).to_be_visible()
    urls = [e["url"] for e in portal.api("GET", "/api/emails/webhook-endpoints/")["results"]]
    assert "http://127.0.0.1:9/evil" not in urls


# --- endpoints --------------------------------------------------------------------------


def test_create_edit_disable_and_delete_an_endpoint(
    page: Page, portal: Portal, tmp_path: Path
) -> None:
    receiver = portal.farm.start()
    enter(page, portal)
    page.click("text=New endpoint")
    expect(page.get_by_role("heading", name="New endpoint")).to_be_visible()
    check(page, "endpoint-new", tmp_path)

    # Refusals appear beside their fields, in words.
    page.fill("#url", "ftp://example.com/hook")
    page.uncheck("input[value=delivered]")
    page.uncheck("input[value=opened]")
    page.uncheck("input[value=clicked]")
    page.uncheck("input[value=bounced]")
    page.uncheck("input[value=unsubscribed]")
    page.fill("#rate_limit", "fast")
    page.click("text=Create endpoint")
    expect(page.locator("#url-error")).to_contain_text("https://")
    expect(page.locator("#events-error")).to_contain_text("Tick at least one event type")
    expect(page.locator("#rate_limit-error")).to_contain_text("Must be a number")
    check(page, "endpoint-new-errors", tmp_path)

    page.fill("#url", receiver.url)
    page.check("input[value=opened]")
    page.check("input[value=bounced]")
    page.fill("#rate_limit", "20")
    page.click("text=Create endpoint")
    expect(page.get_by_role("status")).to_have_text("Endpoint created.")
    expect(page.get_by_role("heading", name=receiver.url)).to_be_visible()
    check(page, "endpoint", tmp_path)

    # The secret only once revealed.
    endpoint_id = page.url.split("/")[-2]
    secret = portal.api("GET", f"/api/emails/webhook-endpoints/{endpoint_id}/")["secret"]
    assert secret not in page.content()
    page.click("text=Reveal")
    expect(page.locator("#secret")).to_have_text(secret)

    page.uncheck("input[value=bounced]")
    page.check("input[value=clicked]")
    page.click("text=Save changes")
    expect(page.get_by_role("status")).to_have_text("Changes saved.")
    shown = portal.api("GET", f"/api/emails/webhook-endpoints/{endpoint_id}/")
    assert (shown["events"], shown["rate_limit"]) == (["opened", "clicked"], 20.0)

    page.click("button:text('Disable')")
    expect(page.get_by_role("status")).to_contain_text("Endpoint disabled.")
    assert portal.api("GET", f"/api/emails/webhook-endpoints/{endpoint_id}/")["enabled"] is False
    page.click("button:text('Enable')")
    expect(page.get_by_role("status")).to_contain_text("Endpoint enabled.")

    page.goto(portal.base + "/portal/endpoints/")
    row = page.get_by_role("row").filter(has_text=receiver.url)
    expect(row).to_contain_text("opened, clicked")
    expect(row).to_contain_text("enabled")
    check(page, "endpoints", tmp_path)

    page.goto(portal.base + f"/portal/endpoints/{endpoint_id}/")
    page.click("text=Delete endpoint…")
    expect(page.get_by_role("heading", name="Delete this endpoint?")).to_be_visible()
    check(page, "endpoint-delete", tmp_path)
    page.click("button:text('Delete endpoint')")
    expect(page.get_by_role("status")).to_have_text("Endpoint deleted.")
    assert portal.status(f"/api/emails/webhook-endpoints/{endpoint_id}/") == 404


def test_another_accounts_endpoint_answers_404(page: Page, portal: Portal, tmp_path: Path) -> None:
    other = portal.new_key("globex")
    theirs = portal.api(
        "POST",
        "/api/emails/webhook-endpoints/",
        {"url": "http://127.0.0.1:9/theirs", "events": ["opened"]},
        key=other,
    )
    enter(page, portal)
    answer = page.goto(portal.base + f"/portal/endpoints/{theirs['id']}/")
    assert answer is not None
    assert answer.status == 404
    expect(page.get_by_role("heading", name="No such endpoint")).to_be_visible()
    check(page, "not-found", tmp_path)
