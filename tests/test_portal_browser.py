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

import itertools
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import ray
import uvicorn
from aiohttp import web
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright
from standardwebhooks import Webhook

from api.app import create_app
from api.portal.links import COOKIE
from dispatcher.settings import Settings
from models.db import make_engine
from tests.conftest import make_key
from tests.receivers import Receiver, Receivers, ok, wait_until
from tests.test_serve_e2e import dispatcher_actors, free_port, serving

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

    def endpoint(self, receiver: Receiver, key: str | None = None) -> dict[str, Any]:
        """A new endpoint of the account, for ``opened`` events, delivering to ``receiver``."""
        body = {"url": receiver.url, "events": ["opened"]}
        endpoint: dict[str, Any] = self.api("POST", "/api/emails/webhook-endpoints/", body, key)
        return endpoint

    def event(self, key: str | None = None) -> str:
        """Post one ``opened`` event, as SentinMail's tracking pixel does; its id."""
        event_id = f"evt-{uuid.uuid4()}"
        body = {"id": event_id, "type": "opened", "recipient": "user@example.com"}
        self.api("POST", "/api/emails/events/", body, key)
        return event_id

    def deliveries(self, key: str | None = None, **filters: str) -> list[dict[str, Any]]:
        """The delivery log, as the API answers it."""
        query = urlencode({**filters, "limit": 250})
        found: list[dict[str, Any]] = self.api("GET", f"/api/emails/deliveries/?{query}", key=key)[
            "results"
        ]
        return found

    def settled(self, event_id: str, key: str | None = None) -> list[dict[str, Any]]:
        """The event's deliveries, once every one has succeeded or failed."""
        done = {"succeeded", "failed"}
        wait_until(
            lambda: all(
                d["status"] in done for d in self.deliveries(key, event_id=event_id) or [{}]
            ),
            timeout=60,
        )
        return self.deliveries(key, event_id=event_id)

    def link(self, key: str | None = None) -> str:
        """A fresh single-use portal link, minted as SentinMail's dashboard does."""
        url: str = self.api("POST", "/api/emails/portal-sessions/", key=key)["url"]
        return url

    def new_key(self, account: str) -> str:
        """A key of another account, as ``sentinmail keys create`` makes it (``accounts.create_key``).

        In this process, on the service's database: the command itself is
        tested in ``tests/test_cli.py``, and a process of its own per test cost
        about 1.6 s of importing.
        """
        engine = make_engine(self.database_url)
        try:
            return make_key(engine, account)
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def service(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    """``serve --dev`` for the module, as the account ``default`` whose key it printed."""
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
        # Its actors die with serve, a moment after it: the tests after these need the
        # session's Ray free of them, and the receivers' connections closed.
        wait_until(lambda: not dispatcher_actors(), timeout=60)
        wait_until(lambda: farm.open_connections() == 0)
    finally:
        farm.close()


NAMES = ["acme", "hooli", "wonka", "tyrell", "soylent", "cyberdyne", "wayne", "stark", "pied-piper"]
CUSTOMERS = (f"{NAMES[n % len(NAMES)]}{'' if n < len(NAMES) else n}" for n in itertools.count())


@pytest.fixture
def portal(service: Portal) -> Portal:
    """The service, as a customer of this test's own: tests do not see each other's deliveries."""
    return Portal(
        service.base, service.new_key(next(CUSTOMERS)), service.farm, service.database_url
    )


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
    for box in page.locator("input[name=events]").all():
        box.uncheck()
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


async def down(_n: int, _request: web.Request) -> web.StreamResponse:
    """A receiver whose database is down, and says so."""
    return web.json_response({"error": "database unavailable"}, status=500)


def verifies(receiver: Receiver, index: int, secret: str) -> bool:
    """Whether the ``index``-th request ``receiver`` got verifies with ``secret``."""
    got = receiver.received[index]
    try:
        Webhook(secret).verify(got.body, got.headers)
    except Exception:
        return False
    return True


# --- endpoint operations ----------------------------------------------------------------


def test_create_an_endpoint_and_see_its_test_event_arrive(
    page: Page, portal: Portal, tmp_path: Path
) -> None:
    receiver = portal.farm.start()
    enter(page, portal)
    page.click("text=New endpoint")
    page.fill("#url", receiver.url)
    page.fill("#headers", "Authorization: Bearer s3cr3t")
    page.click("text=Create endpoint")
    expect(page.get_by_role("status")).to_have_text("Endpoint created.")
    page.select_option("#test-type", "bounced")
    page.click("text=Send test event")
    result = page.locator("#test-result")
    expect(result).to_contain_text("delivered")
    expect(result).to_contain_text("HTTP 200")
    check(page, "endpoint-test-event", tmp_path)

    assert receiver.count() == 1
    got = receiver.received[0]
    payload = json.loads(got.body)
    assert (payload["type"], payload["recipient"]) == ("bounced", "test@example.com")
    assert got.headers["webhook-id"] == payload["id"]
    assert payload["id"].startswith("test_")
    assert got.headers["Authorization"] == "Bearer s3cr3t"  # the custom header set in the form
    endpoint_id = page.url.split("/")[-3]
    secret = portal.api("GET", f"/api/emails/webhook-endpoints/{endpoint_id}/")["secret"]
    assert verifies(receiver, 0, secret)


def test_events_posted_appear_in_the_log_and_filter_by_status(
    page: Page, portal: Portal, tmp_path: Path
) -> None:
    good, bad = portal.farm.start(), portal.farm.start(down)
    portal.endpoint(good)
    portal.endpoint(bad)
    events = [portal.event() for _ in range(3)]
    for event_id in events:
        assert sorted(d["status"] for d in portal.settled(event_id)) == ["failed", "succeeded"]

    enter(page, portal)
    page.click("nav >> text=Deliveries")
    expect(page.get_by_role("heading", name="Deliveries")).to_be_visible()
    for event_id in events:
        expect(page.get_by_role("row").filter(has_text=event_id)).to_have_count(2)
    check(page, "deliveries", tmp_path)

    page.select_option("#f-status", "failed")
    page.click("button:text('Filter')")
    rows = page.locator("tbody tr")
    failed = [d for d in portal.deliveries(status="failed")]
    expect(rows).to_have_count(len(failed))
    for event_id in events:
        row = page.get_by_role("row").filter(has_text=event_id)
        expect(row).to_have_count(1)
        expect(row).to_contain_text(bad.url)
        expect(row).to_contain_text("failed")
        expect(row).to_contain_text("HTTP 500")
    check(page, "deliveries-failed", tmp_path)

    page.get_by_role("row").filter(has_text=events[0]).get_by_role("link").click()
    expect(page.get_by_role("heading", name=f"Delivery of opened {events[0]}")).to_be_visible()
    expect(page.locator("pre").first).to_contain_text("database unavailable")
    check(page, "delivery-failed", tmp_path)


def test_a_failed_delivery_retried_from_its_page_gets_a_new_attempt(
    page: Page, portal: Portal, tmp_path: Path
) -> None:
    flaky = portal.farm.start(down)
    endpoint = portal.endpoint(flaky)
    event_id = portal.event()
    (delivery,) = portal.settled(event_id)
    assert delivery["status"] == "failed"

    flaky.behaviour = ok  # the customer fixed their receiver
    enter(page, portal)
    page.goto(f"{portal.base}/portal/deliveries/{delivery['id']}/")
    page.click("button:text('Retry')")
    expect(page.get_by_role("status")).to_contain_text("Retry scheduled")
    wait_until(lambda: flaky.count() == 2, timeout=60)
    assert portal.settled(event_id)[0]["status"] == "succeeded"
    page.reload()
    attempts = page.locator("tbody tr")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text("HTTP 500")
    expect(attempts.nth(1)).to_contain_text("HTTP 200")
    expect(page.locator("dl.facts")).to_contain_text("succeeded")
    check(page, "delivery", tmp_path)
    # Signed afresh, with the same webhook-id.
    first, second = flaky.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event_id
    assert verifies(flaky, 1, endpoint["secret"])

    # The endpoint's health shows the failure and the success.
    page.goto(f"{portal.base}/portal/endpoints/{endpoint['id']}/")
    expect(page.get_by_role("heading", name="Last 24 h")).to_be_visible()
    health = page.locator(".card").filter(has_text="Last 24 h")
    expect(health).to_contain_text("2 (1 failed)")
    expect(health).to_contain_text("50.0 %")
    expect(page.locator("#breaker")).to_have_text("closed")
    check(page, "endpoint-health", tmp_path)


def test_a_rotated_secret_and_the_old_one_both_verify_at_the_receiver(
    page: Page, portal: Portal, tmp_path: Path
) -> None:
    receiver = portal.farm.start()
    endpoint = portal.endpoint(receiver)
    old = endpoint["secret"]
    enter(page, portal)
    page.goto(f"{portal.base}/portal/endpoints/{endpoint['id']}/")
    page.select_option("#grace", "3600")
    page.click("button:text('Rotate')")
    expect(page.locator("p.notice")).to_contain_text("Secret rotated.")
    new = portal.api("GET", f"/api/emails/webhook-endpoints/{endpoint['id']}/")["secret"]
    assert new != old
    expect(page.locator("#secret")).to_have_text(new)
    check(page, "endpoint-rotated", tmp_path)

    portal.settled(portal.event())
    assert receiver.count() == 1
    assert len(receiver.received[0].headers["webhook-signature"].split()) == 2
    assert verifies(receiver, 0, new)
    assert verifies(receiver, 0, old)


def test_another_accounts_delivery_answers_404(page: Page, portal: Portal, tmp_path: Path) -> None:
    other = portal.new_key("initech")
    portal.endpoint(portal.farm.start(), key=other)
    (theirs,) = portal.settled(portal.event(key=other), key=other)
    enter(page, portal)
    answer = page.goto(f"{portal.base}/portal/deliveries/{theirs['id']}/")
    assert answer is not None
    assert answer.status == 404
    expect(page.get_by_role("heading", name="No such delivery")).to_be_visible()
    csrf = page.locator("header input[name=csrf_token]").get_attribute("value")
    retried = page.request.post(
        f"{portal.base}/portal/deliveries/{theirs['id']}/retry/", form={"csrf_token": csrf or ""}
    )
    assert retried.status == 404
    assert portal.deliveries(key=other)[0]["attempt_count"] == 1


# --- the bad moment ---------------------------------------------------------------------


def test_the_portal_says_when_its_database_does_not_answer(page: Page, tmp_path: Path) -> None:
    """A signed-in customer whose portal cannot reach the database gets a page, not JSON or a 500."""
    url = f"sqlite:///{tmp_path}/no/such/directory/sentinmail.db"
    port = free_port()
    app = create_app(Settings(database_url=url, dev=True), make_engine(url))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=30)
        base = f"http://127.0.0.1:{port}"
        page.context.add_cookies([{"name": COOKIE, "value": "a-session", "url": base}])
        response = page.goto(f"{base}/portal/endpoints/")
        assert response is not None
        assert response.status == 503
        assert response.headers["retry-after"] == "1"
        expect(
            page.get_by_role("heading", name="The portal cannot reach its database")
        ).to_be_visible()
        check(page, "database-unavailable", tmp_path)
    finally:
        server.should_exit = True
        thread.join(30)
