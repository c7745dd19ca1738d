"""The operator inbox without a browser: sign-in, sessions, CSRF, permissions, replies, the change feed.

The pages run on both engines (``both_engines``: a SQLite file, or a PostgreSQL schema of the test's own)."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import quote

import httpx
import pytest

from bot_core import handoff
from bot_core.inbox import operators, reader
from bot_core.inbox.auth import SESSION_COOKIE, Throttle

from .harness import OURS, SECRET, THEIRS, Running, make_config, plugin

OTHER_NUMBER = "+13125550177"  # profile "other"
PASSWORD = "correct horse battery"
both_engines = pytest.mark.usefixtures("database")  # $BOT_CORE_DATABASE, which inbox_config names
parrot = plugin("parrot", handle_message=lambda message: f"bot: {message.text}")


@pytest.fixture
def anyio_backend():
    return "asyncio"


def inbox_config(tmp_path, **settings):
    from bot_core import Config

    return Config.from_dict(
        {
            "bot": {"database": "${BOT_CORE_DATABASE:-bot.db}", "public_url": settings.pop("public_url", "http://bot")},
            "telnyx": {"api_base": "http://telnyx.test"},
            "sending": {"backoff_initial": "10ms", "backoff_max": "50ms"},
            "inbox": {"enabled": True, "login_delay": "50ms", "poll_interval": "20ms", **settings},
            "profiles": {
                "main": {"secret": SECRET, "numbers": [OURS], "plugins": ["parrot"]},
                "other": {"secret": SECRET, "numbers": [OTHER_NUMBER], "plugins": ["parrot"]},
            },
        },
        base_dir=tmp_path,
    )


def add_operator(run: Running, name: str, *profiles: str) -> None:
    with run.bot.store.transaction() as conn:
        assert operators.add(conn, name, PASSWORD, profiles, 0)


def csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html)[1]


async def sign_in(http: httpx.AsyncClient, name: str, password: str = PASSWORD) -> httpx.Response:
    token = csrf((await http.get("/inbox/login")).text)
    return await http.post("/inbox/login", data={"csrf": token, "username": name, "password": password})


async def signed_in(run: Running, name: str, *profiles: str) -> httpx.AsyncClient:
    add_operator(run, name, *profiles)
    response = await sign_in(run.http, name)
    assert response.status_code == 303, response.text
    return run.http


async def conversation_id(run: Running, their: str = THEIRS, ours: str = OURS) -> int:
    return run.bot.store.conversation(None, ours, their).id


@pytest.mark.anyio
@both_engines
async def test_every_page_needs_a_sign_in_and_the_webhook_stays_open(tmp_path):
    async with Running(inbox_config(tmp_path), None, parrot) as run:
        await run.text("hello")
        await run.settle()
        assert (await run.http.get("/inbox/")).headers["location"] == "/inbox/login?next=/inbox/"
        assert (await run.http.get("/inbox/c/1")).headers["location"] == "/inbox/login?next=/inbox/c/1"
        assert (await run.http.get("/inbox/events")).status_code == 401
        assert (await run.http.get("/metrics")).status_code == 200
        login = await run.http.get("/inbox/login")
        assert '<label for="username">Username</label>' in login.text
        assert '<label for="password">Password</label>' in login.text
        assert '<button type="submit">Sign in</button>' in login.text
        assert login.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in login.headers["content-security-policy"]


@pytest.mark.anyio
@both_engines
async def test_the_inbox_is_off_unless_enabled(tmp_path):
    async with Running(make_config(tmp_path, ["parrot"]), None, parrot) as run:
        assert (await run.http.get("/inbox/login")).status_code == 404


@pytest.mark.anyio
@both_engines
async def test_a_sign_in_sets_a_signed_httponly_samesite_secure_cookie(tmp_path):
    async with Running(inbox_config(tmp_path, public_url="https://bot.example.com"), None, parrot) as run:
        run.http.base_url = "https://bot"  # a Secure cookie comes back only over https
        add_operator(run, "alice")
        response = await sign_in(run.http, "alice")
        assert response.status_code == 303 and response.headers["location"] == "/inbox/"
        cookie = response.headers["set-cookie"].lower()
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        for flag in ("httponly", "samesite=lax", "secure", "path=/inbox"):
            assert flag in cookie


@pytest.mark.anyio
@both_engines
async def test_without_https_the_cookie_is_not_secure(tmp_path):
    async with Running(inbox_config(tmp_path, public_url="http://localhost:8000"), None, parrot) as run:
        add_operator(run, "alice")
        response = await sign_in(run.http, "alice")
        assert "secure" not in response.headers["set-cookie"].lower()


@pytest.mark.anyio
@both_engines
async def test_a_post_without_the_csrf_token_is_refused(tmp_path):
    async with Running(inbox_config(tmp_path), None, parrot) as run:
        await run.text("hello")
        await run.settle()
        add_operator(run, "alice")
        refused = await run.http.post("/inbox/login", data={"username": "alice", "password": PASSWORD})
        assert refused.status_code == 403
        await sign_in(run.http, "alice")
        cid = await conversation_id(run)
        for action, data in (("take", {}), ("reply", {"text": "hi"}), ("take", {"csrf": "forged"})):
            response = await run.http.post(f"/inbox/c/{cid}/{action}", data=data)
            assert response.status_code == 403, action
        assert run.mdrs(direction="outbound", text="hi") == []
        row = run.bot.store._rows("SELECT with_person FROM conversations WHERE id = ?", (cid,))[0]
        assert row["with_person"] == 0


@pytest.mark.anyio
@both_engines
async def test_wrong_passwords_are_refused_and_slowed_down(tmp_path):
    async with Running(inbox_config(tmp_path, login_delay="2s"), None, parrot) as run:
        add_operator(run, "alice")
        wrong = await sign_in(run.http, "alice", "not the password")
        assert wrong.status_code == 401 and "Wrong username or password" in wrong.text
        # Even the right password waits out the lock, so guessing goes no faster than the delay.
        locked = await sign_in(run.http, "alice")
        assert locked.status_code == 429 and "Too many failed sign-ins" in locked.text
        unknown = await sign_in(run.http, "nobody", "whatever")  # the client is locked out too
        assert unknown.status_code == 429
        assert (await run.http.get("/inbox/")).status_code == 303  # still not signed in
        deadline = asyncio.get_running_loop().time() + 10
        while (response := await sign_in(run.http, "alice")).status_code == 429:  # until the lock runs out
            assert asyncio.get_running_loop().time() < deadline, "the lock never ran out"
            await asyncio.sleep(0.05)
        assert response.status_code == 303


def test_the_lock_doubles_with_each_failure_and_a_success_clears_the_name():
    now = [100.0]
    throttle = Throttle(1.0, clock=lambda: now[0])
    assert throttle.failed("name:a", "client:x") == 1.0
    assert throttle.failed("name:a", "client:x") == 2.0
    assert throttle.wait("name:a") == 2.0 and throttle.wait("name:b", "client:x") == 2.0
    now[0] += 2.0
    assert throttle.wait("name:a", "client:x") == 0.0
    throttle.succeeded("name:a")
    assert throttle.failed("name:a") == 1.0  # the name starts again
    assert throttle.failed("client:x") == 4.0  # the client does not
    for _ in range(20):
        throttle.failed("client:y")
    assert throttle.wait("client:y") == 60.0


@pytest.mark.anyio
@both_engines
async def test_an_operator_sees_only_the_profiles_granted_also_by_url(tmp_path):
    async with Running(inbox_config(tmp_path), None, parrot) as run:
        await run.text("for main")
        await run.text("for other", to=OTHER_NUMBER)
        await run.settle()
        http = await signed_in(run, "bob", "main")
        page = (await http.get("/inbox/")).text
        assert THEIRS in page and OTHER_NUMBER not in page and "for other" not in page
        mine, theirs = await conversation_id(run), await conversation_id(run, ours=OTHER_NUMBER)
        assert (await http.get(f"/inbox/c/{mine}")).status_code == 200
        token = csrf(page)
        assert (await http.get(f"/inbox/c/{theirs}")).status_code == 404
        assert (await http.get(f"/inbox/c/{theirs}?partial=1")).status_code == 404
        for action in ("take", "release", "reply"):
            response = await http.post(f"/inbox/c/{theirs}/{action}", data={"csrf": token, "text": "hi"})
            assert response.status_code == 404, action
        assert (await http.get("/inbox/?q=for")).text.count('href="/inbox/c/') == 1


@pytest.mark.anyio
@both_engines
async def test_the_list_pages_through_older_conversations(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "PAGE", 2)
    async with Running(inbox_config(tmp_path), None, parrot) as run:
        customers = [f"+1312555020{i}" for i in range(5)]
        for customer in customers:
            await run.text("hi", from_=customer)
            await run.settle()
        http = await signed_in(run, "alice")
        seen, path = [], "/inbox/"
        while path:
            page = (await http.get(path)).text
            seen += re.findall(r'<span class="who">([^<]+)</span>', page)
            older = re.search(r'href="(/inbox/\?before=[^"]+)"', page)
            path = older[1].replace("&amp;", "&") if older else None
        assert seen == customers[::-1]  # latest first, each once


@pytest.mark.anyio
@both_engines
async def test_an_operator_with_no_profiles_named_sees_them_all(tmp_path):
    async with Running(inbox_config(tmp_path), None, parrot) as run:
        await run.text("for main")
        await run.text("for other", to=OTHER_NUMBER)
        await run.settle()
        http = await signed_in(run, "carol")
        page = (await http.get("/inbox/")).text
        assert THEIRS in page and "for other" in page
        assert (await http.get("/inbox/?q=(312) 555-0123")).text.count('href="/inbox/c/') == 2  # both profiles
        assert (await http.get("/inbox/?q=555-0199")).text.count('href="/inbox/c/') == 0
        assert (await http.get(f"/inbox/?q={quote(THEIRS)}")).text.count('href="/inbox/c/') == 2  # exact
        found = (await http.get("/inbox/?q=OTHER")).text  # text, any case
        assert found.count('href="/inbox/c/') == 1 and "for other" in found
        assert (await http.get("/inbox/?q=100%")).text.count('href="/inbox/c/') == 0  # % is a character


@pytest.mark.anyio
@both_engines
async def test_an_operator_reply_goes_out_from_the_number_texted_naming_the_operator(tmp_path):
    async with Running(inbox_config(tmp_path), None, parrot) as run:
        await run.text("I need help")
        await run.settle()
        http = await signed_in(run, "alice")
        cid = await conversation_id(run)
        page = (await http.get(f"/inbox/c/{cid}")).text
        assert '<label for="reply">Reply</label>' in page and ">Send</button>" in page and ">Take over</button>" in page
        response = await http.post(f"/inbox/c/{cid}/reply", data={"csrf": csrf(page), "text": "Hi, Alice here"})
        assert response.status_code == 303 and response.headers["location"] == f"/inbox/c/{cid}"
        await run.settle()
        sent = [c for c in run.telnyx.accepted if c.text == "Hi, Alice here"]
        assert len(sent) == 1 and sent[0].json["from"] == OURS and sent[0].json["to"] == THEIRS
        assert sent[0].headers["x-profile-secret"] == SECRET
        mdr = run.bot.store._rows("SELECT operator, conversation_id FROM mdrs WHERE text = 'Hi, Alice here'")[0]
        assert mdr == {"operator": "alice", "conversation_id": cid}
        assert [m["operator"] for m in run.mdrs(direction="outbound")] == [None, "alice"]  # `bot-core messages`
        page = (await http.get(f"/inbox/c/{cid}")).text
        assert "With alice" in page and ">Hand back</button>" in page
        await run.text("thanks")  # the conversation is alice's now: the bot stays quiet
        await run.settle()
        assert run.telnyx.texts() == ["bot: I need help", "Hi, Alice here"]
        empty = await http.post(f"/inbox/c/{cid}/reply", data={"csrf": csrf(page), "text": "  "})
        assert empty.status_code == 400


@pytest.mark.anyio
@both_engines
async def test_no_reply_to_a_customer_who_opted_out(tmp_path):
    async with Running(inbox_config(tmp_path), None, parrot) as run:
        await run.text("hello")
        await run.settle()
        run.bot.opt_out("main", THEIRS, "test")
        http = await signed_in(run, "alice")
        cid = await conversation_id(run)
        page = (await http.get(f"/inbox/c/{cid}")).text
        assert "Opted out" in page and re.search(r'<textarea id="reply"[^>]* disabled', page)
        response = await http.post(f"/inbox/c/{cid}/reply", data={"csrf": csrf(page), "text": "still there?"})
        assert response.status_code == 409
        assert run.mdrs(text="still there?") == []


@pytest.mark.anyio
@both_engines
async def test_removing_an_operator_ends_their_session(tmp_path):
    async with Running(inbox_config(tmp_path), None, parrot) as run:
        http = await signed_in(run, "dave")
        assert (await http.get("/inbox/")).status_code == 200
        with run.bot.store.transaction() as conn:
            operators.remove(conn, "dave")
        assert (await http.get("/inbox/")).status_code == 303


@pytest.mark.anyio
@both_engines
async def test_sessions_survive_a_restart_with_the_generated_key(tmp_path):
    async with Running(inbox_config(tmp_path), None, parrot) as run:
        http = await signed_in(run, "erin")
        cookies = dict(http.cookies)
        await run.restart()
        run.http.cookies.update(cookies)
        assert (await run.http.get("/inbox/")).status_code == 200


@pytest.mark.anyio
@both_engines
async def test_a_configured_secret_key_signs_the_sessions(tmp_path):
    key = "k" * 40
    async with Running(inbox_config(tmp_path, secret_key=key), None, parrot) as run:
        await signed_in(run, "frank")
        assert run.bot.store._rows("SELECT * FROM inbox_keys") == []


@pytest.mark.anyio
@both_engines
async def test_the_change_feed_names_changed_conversations_to_those_who_may_see_them(tmp_path):
    async with Running(inbox_config(tmp_path), None, parrot) as run:
        inbox = next(r.app for r in run.http._transport.app.routes if getattr(r, "path", "") == "/inbox")
        everyone = inbox.notifier.subscribe(operators.Operator("all"))
        others = inbox.notifier.subscribe(operators.Operator("o", ("other",)))
        await run.text("hello")
        await run.settle()
        cid = await conversation_id(run)
        assert cid in await asyncio.wait_for(everyone.queue.get(), 10)
        await run.text("for other", to=OTHER_NUMBER)
        await run.settle()
        other_cid = await conversation_id(run, ours=OTHER_NUMBER)
        assert await asyncio.wait_for(others.queue.get(), 10) == [other_cid]
        inbox.notifier.unsubscribe(everyone)
        inbox.notifier.unsubscribe(others)


def test_config_refuses_a_short_secret_key(tmp_path):
    from bot_core import ConfigError

    with pytest.raises(ConfigError, match="inbox.secret_key: must be at least 32 characters"):
        inbox_config(tmp_path, secret_key="short")


@pytest.mark.anyio
@both_engines
async def test_a_change_made_by_one_replica_reaches_an_inbox_open_on_another(tmp_path):
    """Two bots on one database (replicas; on SQLite, processes of one host): the inbox of one
    hears of writes only the other made, a webhook it took and a handoff, from the database."""
    async with (
        Running(inbox_config(tmp_path), None, parrot) as one,
        Running(inbox_config(tmp_path), None, parrot) as two,
    ):
        inbox = next(r.app for r in two.http._transport.app.routes if getattr(r, "path", "") == "/inbox")
        watching = inbox.notifier.subscribe(operators.Operator("all"))
        await one.text("hello")
        await one.settle()
        cid = await conversation_id(one)
        assert cid in await asyncio.wait_for(watching.queue.get(), 10)
        # A conversation only replica one writes (no work unit another replica could take), handed over.
        fresh = one.bot.store.conversation("main", OURS, "+13125550188")
        assert handoff.hand_over(one.bot, fresh, "test", operator="alice")
        seen: list[int] = []
        while fresh.id not in seen:
            seen += await asyncio.wait_for(watching.queue.get(), 10)
        inbox.notifier.unsubscribe(watching)


@pytest.mark.anyio
@both_engines
async def test_open_inboxes_share_one_render_of_the_list_until_a_change_is_found(tmp_path, monkeypatch):
    """The list's live region (``?partial=1``, and what a list's event stream sends): one render
    (one read) serves every open inbox until the change feed finds the next change; an operator
    limited to other profiles gets a render of their own."""
    from starlette.routing import Mount

    from bot_core.asgi import create_app

    async with Running(inbox_config(tmp_path), None, parrot) as run:
        await run.text("hello")
        await run.settle()
        add_operator(run, "alice")
        add_operator(run, "bob", "other")
        app = create_app(run.bot)
        inbox = next(route.app for route in app.routes if isinstance(route, Mount) and route.path == "/inbox")
        reads = []
        real = reader.conversations
        monkeypatch.setattr(reader, "conversations", lambda *a, **k: reads.append(a[1].name) or real(*a, **k))

        async def client(name: str) -> httpx.AsyncClient:
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bot")
            assert (await sign_in(http, name)).status_code == 303
            return http

        alice = [await client("alice") for _ in range(10)]
        bob = await client("bob")
        pages = await asyncio.gather(*(http.get("/inbox/?partial=1") for http in alice))
        assert {page.status_code for page in pages} == {200} and len({page.text for page in pages}) == 1
        assert THEIRS in pages[0].text and pages[0].headers["cache-control"] == "no-store"
        assert reads == ["alice"]
        assert THEIRS not in (await bob.get("/inbox/?partial=1")).text  # not his profile
        assert reads == ["alice", "bob"]

        await run.text("hello", from_="+13125550188")
        await run.settle()
        inbox.notifier.generation += 1  # what the poller does when it finds that change
        assert "+13125550188" in (await alice[0].get("/inbox/?partial=1")).text
        assert reads == ["alice", "bob", "alice"]
        for http in [*alice, bob]:
            await http.aclose()


class Stream:
    """A GET of the event stream straight on the ASGI app, read as it arrives (httpx's
    ASGITransport hands a body over only once the app has finished)."""

    def __init__(self, app, http: httpx.AsyncClient, path: str) -> None:
        path, _, query = path.partition("?")
        cookie = "; ".join(f"{name}={value}" for name, value in http.cookies.items())
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                 "root_path": "", "headers": [(b"host", b"bot"), (b"cookie", cookie.encode())],
                 "client": ("127.0.0.1", 1), "server": ("bot", 80)}  # fmt: skip
        self.messages: asyncio.Queue[dict] = asyncio.Queue()
        self._gone = asyncio.Event()
        self.task = asyncio.create_task(app(scope, self._receive, self.messages.put))

    async def _receive(self) -> dict:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def event(self) -> tuple[str, str] | None:
        """The next event (name, data), or None when the stream ends."""
        while True:
            message = await asyncio.wait_for(self.messages.get(), 10)
            if message["type"] == "http.response.start":
                assert message["status"] == 200
                continue
            if not message.get("more_body"):
                return None
            lines = message["body"].decode().split("\n")
            if lines[0].startswith("event: "):
                data = "\n".join(line.removeprefix("data: ") for line in lines[1:] if line.startswith("data: "))
                return lines[0].removeprefix("event: "), data

    async def close(self) -> None:
        self._gone.set()
        await asyncio.wait_for(self.task, 10)


@pytest.mark.anyio
@both_engines
async def test_a_list_stream_sends_the_list_at_once_and_after_changes_and_ends_with_its_operator(tmp_path):
    """An open list is sent its live region over the event stream (what inbox.js shows): at once,
    then after a change, only the conversations its operator may see, the same render for
    every open list of the view; the stream ends when its operator is removed."""
    from starlette.routing import Mount

    from bot_core.asgi import create_app

    async with Running(inbox_config(tmp_path), None, parrot) as run:
        await run.text("hello")
        await run.text("for other", to=OTHER_NUMBER, from_="+13125550166")
        await run.settle()
        add_operator(run, "alice", "main")
        app = create_app(run.bot)
        inbox = next(route.app for route in app.routes if isinstance(route, Mount) and route.path == "/inbox")
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bot")
        assert (await sign_in(http, "alice")).status_code == 303
        streams = [Stream(app, http, "/inbox/events?list=1") for _ in range(2)]
        waiting = Stream(app, http, "/inbox/events?list=1&waiting=1")
        first = [await stream.event() for stream in streams]
        assert first[0] == first[1] and first[0][0] == "list"
        assert THEIRS in first[0][1] and "+13125550166" not in first[0][1]  # not her profile
        assert first[0][1] == (await http.get("/inbox/?partial=1")).text
        assert "No conversations need a human" in (await waiting.event())[1]

        await run.text("again", from_="+13125550188")
        await run.settle()
        while "+13125550188" not in (event := await streams[0].event())[1]:  # earlier polls may come first
            assert event[0] == "list"
        assert event[1].index("+13125550188") < event[1].index(THEIRS)  # latest first

        with run.bot.store.transaction() as conn:
            operators.remove(conn, "alice")
        inbox.notifier.generation += 1
        await run.text("once more", from_="+13125550188")
        await run.settle()
        pushed = 0
        while await streams[1].event() is not None:  # lists pushed before the removal, then the end
            pushed += 1
            assert pushed < 10
        for stream in [*streams, waiting]:
            await stream.close()
        assert (await http.get("/inbox/events?list=1")).status_code == 401
        await http.aclose()
