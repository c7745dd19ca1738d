"""The operator inbox in a real Chromium: `bot-core serve` as a process, the fake Telnyx on loopback.

Debian's ``chromium`` driven by Playwright through ``executable_path``: no browser is downloaded
(never run ``playwright install``). Without Chromium or Playwright these tests skip, saying why;
``.ci/run`` installs the package when it is missing.

One Chromium per test process, a fresh browser context (cookies, storage) per test; each test has
its own server and database. The main flow runs on both engines, the rest on SQLite.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot_core.inbox import operators
from bot_core.store import open_store
from bot_core.testing import FakeTelnyx

from .conftest import Server, rows, wait_for

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
    pytest.skip("Chromium is not installed (apt-get install -y chromium; .ci/run does it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e '.[test]')")
expect = sync_api.expect

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
SUPPORT, SALES = "+13125550100", "+13125550101"
CUSTOMER, NEWCOMER = "+13125550123", "+13125550999"
SECRETS = {SUPPORT: "support-secret-browser", SALES: "sales-secret-browser"}
PASSWORD = "operator password 1"
SCREENSHOT = Path(__file__).parent.parent / "docs" / "images" / "inbox-conversation.png"


@pytest.fixture(scope="session")
def browser() -> Iterator:
    """Launched once per test process (a second or more on a loaded machine); tests share it, not state."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context(viewport={"width": 900, "height": 760})
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()  # before the server stops: an open event stream would hold its shutdown


@pytest.fixture
def engine() -> str:
    """SQLite, unless a test is parametrized over both engines (``on_both_engines``)."""
    return "sqlite"


on_both_engines = pytest.mark.parametrize("engine", ["sqlite", "postgres"])


@functools.cache
def password_hash() -> str:
    """One Argon2 hash for every operator of every test: a hash costs 0.1 to 0.6 s (64 MiB)."""
    return operators._hasher.hash(PASSWORD)


class Desk:
    """A running bot with the inbox on, the fake Telnyx, and helpers to play the customer."""

    def __init__(self, tmp_path: Path, fake: FakeTelnyx, database: str) -> None:
        self.fake = fake
        fake.webhooks.secrets.update(SECRETS)
        config = tmp_path / "bot.toml"
        config.write_text(
            textwrap.dedent(f"""
            [bot]
            database = "${{BOT_CORE_DATABASE}}"
            shutdown_grace = 1

            [telnyx]
            api_base = "{fake.url}"

            [inbox]
            enabled = true
            poll_interval = "100ms"
            login_delay = "4s"  # long enough that the second try is still locked on a loaded machine

            [profiles.support]
            secret = "{SECRETS[SUPPORT]}"
            numbers = ["{SUPPORT}"]
            plugins = ["handoff", "echo"]

            [profiles.support.plugin_config.handoff]
            keywords = ["AGENT"]

            [profiles.sales]
            secret = "{SECRETS[SALES]}"
            numbers = ["{SALES}"]
            plugins = ["echo"]
        """)
        )
        self.store = open_store(database)  # migrates the database, then looks at it for the test
        with self.store.transaction() as conn:
            for name, profiles in (("alice", []), ("bob", ["sales"])):
                conn.execute(
                    "INSERT INTO operators (name, password_hash, profiles, created_at) VALUES (?, ?, ?, ?)",
                    (name, password_hash(), json.dumps(profiles), "2026-01-01T00:00:00.000+00:00"),
                )
        self.server = Server(config, tmp_path / "server.log").start()
        self.url = self.server.url

    def text(self, text: str, *, from_: str = CUSTOMER, to: str = SUPPORT) -> None:
        [response] = self.fake.deliver(
            self.url + "/webhooks/telnyx", self.fake.webhooks.message(text, from_=from_, to=to)
        )
        assert response.status_code == 200, response.text

    def sent(self, text: str) -> str:
        """The Telnyx id of the message with ``text`` once the fake accepted it."""
        return wait_for(
            lambda: next((i for i, m in list(self.fake.messages.items()) if m["msg"]["body"] == text), None)
        )

    def rows(self, sql: str, *params) -> list[tuple]:
        return rows(self.store, sql, params)

    def conversation_id(self, their: str = CUSTOMER, ours: str = SUPPORT) -> int:
        return wait_for(lambda: self.rows("SELECT id FROM conversations WHERE our_number = ? AND their_number = ?",
                                          ours, their))[0][0]  # fmt: skip


@pytest.fixture
def desk(tmp_path, fake_telnyx_server, database) -> Iterator[Desk]:
    desk = Desk(tmp_path, fake_telnyx_server, database)
    yield desk
    desk.server.stop()
    desk.store.close()


def sign_in(page, desk: Desk, name: str = "alice", password: str = PASSWORD) -> None:
    page.goto(desk.url + "/inbox/")
    expect(page).to_have_url(re.compile(r"/inbox/login"))
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def live(page) -> None:
    """Wait for the page's event stream, and mark the page so a reload would show."""
    expect(page.locator("html")).to_have_attribute("data-events", "open")
    page.evaluate("window.notReloaded = true")


def not_reloaded(page) -> bool:
    return page.evaluate("window.notReloaded === true")


@on_both_engines
def test_an_operator_takes_over_answers_and_hands_back(page, desk, engine):
    desk.text("hello")
    desk.sent("echo hello #1")
    # Sign in with the keyboard alone: the username field has focus, Tab moves, Enter submits.
    page.goto(desk.url + "/inbox/")
    expect(page.get_by_label("Username")).to_be_focused()
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Conversations")).to_be_visible()
    expect(page.get_by_role("link", name=re.compile(re.escape(CUSTOMER)))).to_be_visible()

    live(page)  # a new customer appears without reloading
    desk.text("first time here", from_=NEWCOMER)
    expect(page.get_by_role("link", name=re.compile(re.escape(NEWCOMER)))).to_contain_text("first time here")
    assert not_reloaded(page)

    page.get_by_role("link", name=re.compile(re.escape(CUSTOMER))).click()
    expect(page.get_by_role("heading", name=CUSTOMER)).to_be_visible()
    page.get_by_role("button", name="Take over").click()
    expect(page.get_by_text("With alice")).to_be_visible()
    expect(page.get_by_role("button", name="Hand back")).to_be_visible()

    live(page)  # the customer's next message reaches no plugin and shows as waiting
    desk.text("are you a person?")
    message = page.locator(".thread li", has_text="are you a person?")
    expect(message).to_contain_text("waiting for a person")
    assert not_reloaded(page)
    inbound = desk.rows("SELECT id, status FROM mdrs WHERE text = ?", "are you a person?")
    assert inbound[0][1] == "waiting"
    assert desk.rows("SELECT COUNT(*) FROM mdrs WHERE direction = 'outbound' AND id > ?", inbound[0][0]) == [(0,)]

    page.get_by_label("Reply").fill("Hi, this is Alice. How can I help?")
    page.get_by_role("button", name="Send").click()
    sms_id = desk.sent("Hi, this is Alice. How can I help?")
    assert desk.fake.sent[-1].json["from"] == SUPPORT
    assert desk.fake.sent[-1].headers["x-profile-secret"] == SECRETS[SUPPORT]
    reply = page.locator(".thread li.operator", has_text="Hi, this is Alice")
    expect(reply).to_contain_text("alice")
    expect(reply.locator(".status")).to_have_text("queued")
    live(page)  # the delivery status changes live when the fake Telnyx reports it
    desk.fake.deliver(desk.url + "/webhooks/telnyx", desk.fake.report(sms_id, "delivered"))
    expect(reply.locator(".status")).to_have_text("delivered")
    assert not_reloaded(page)
    if engine == "sqlite":  # one writer of the docs' picture
        picture = page.screenshot(full_page=True)
        assert picture.startswith(b"\x89PNG") and page.viewport_size
        # The docs' copy is rewritten on request, so a test run leaves the checkout clean.
        if os.environ.get("BOT_CORE_SCREENSHOTS") or not SCREENSHOT.exists():
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            SCREENSHOT.write_bytes(picture)

    page.get_by_role("button", name="Hand back").click()
    expect(page.get_by_text("The bot has this conversation.")).to_be_visible()
    desk.text("thanks bot")
    desk.sent("echo thanks bot #2")  # the echo plugin counts the messages it answered


def test_stop_while_a_person_has_it_opts_out_and_disables_the_reply_box(page, desk):
    desk.text("AGENT")  # the keyword plugin hands the conversation over
    desk.sent("Thanks. A person will text you back shortly.")
    sign_in(page, desk)
    page.get_by_role("link", name="Needs a human", exact=True).click()
    page.get_by_role("link", name=re.compile(re.escape(CUSTOMER))).click()
    expect(page.get_by_text("a person (nobody has taken it yet): texted AGENT")).to_be_visible()
    expect(page.get_by_label("Reply")).to_be_enabled()
    live(page)
    desk.text("STOP")
    expect(page.get_by_text("Opted out: this customer texted STOP")).to_be_visible()
    expect(page.get_by_label("Reply")).to_be_disabled()
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    assert not_reloaded(page)
    desk.sent("You are unsubscribed and will get no more messages. Reply START to resubscribe.")


def test_an_operator_of_one_profile_cannot_open_another_profiles_conversation(page, desk):
    desk.text("support question")
    desk.text("sales question", to=SALES)
    support_id, sales_id = desk.conversation_id(), desk.conversation_id(ours=SALES)
    sign_in(page, desk, "bob")
    expect(page.get_by_role("link", name=re.compile(re.escape(CUSTOMER)))).to_have_count(1)
    expect(page.get_by_role("link", name=re.compile(re.escape(CUSTOMER)))).to_contain_text("sales question")
    response = page.goto(f"{desk.url}/inbox/c/{support_id}")  # typing the URL
    assert response.status == 404
    expect(page.get_by_text("No such conversation.")).to_be_visible()
    assert page.goto(f"{desk.url}/inbox/c/{sales_id}").status == 200


def test_a_post_without_the_csrf_token_is_refused(page, desk):
    desk.text("hello")
    cid = desk.conversation_id()
    sign_in(page, desk)
    page.goto(f"{desk.url}/inbox/c/{cid}")
    # The browser's own form post, with the token taken out on the way.
    page.route("**/take", lambda route: route.continue_(post_data=re.sub(r"csrf=[^&]*&?", "", route.request.post_data)))
    page.get_by_role("button", name="Take over").click()
    expect(page.get_by_text("did not come from the inbox")).to_be_visible()
    assert page.request.post(f"{desk.url}/inbox/c/{cid}/take").status == 403  # the session cookie alone
    assert desk.rows("SELECT with_person FROM conversations WHERE id = ?", cid) == [(0,)]


def test_wrong_passwords_are_refused_and_slowed_down(page, desk):
    sign_in(page, desk, "alice", "not my password")
    expect(page.get_by_role("alert")).to_contain_text("Wrong username or password")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Too many failed sign-ins")  # even the right one waits
    expect(page).to_have_url(re.compile(r"/inbox/login"))

    def retry() -> bool:
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()
        return page.get_by_role("heading", name="Conversations").count() == 1

    assert wait_for(retry, timeout=15, interval=0.2)


def test_the_list_fits_a_phone_screen(page, desk):
    desk.text("a rather long message from a customer who writes a lot, to see that it wraps on a phone")
    page.set_viewport_size({"width": 360, "height": 740})
    sign_in(page, desk)
    expect(page.get_by_role("link", name=re.compile(re.escape(CUSTOMER)))).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    page.get_by_role("link", name=re.compile(re.escape(CUSTOMER))).click()
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
