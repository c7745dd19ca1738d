"""Bad input never crashes and never corrupts: property-based tests of the webhook.

Random and mutated payloads, signed correctly (so they reach the store and the plugins) or not,
with odd headers and encodings, go through the real ASGI app of a running bot. Every answer
must be a 2xx or 4xx with a JSON body, the bot must still work afterwards, and the database
must pass SQLite's integrity check.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import socket
import time
from typing import Any

import nacl.signing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot_core.asgi import MAX_BODY, create_app
from bot_core.webhooks import sign_v1, sign_v2

from .conftest import sample
from .harness import OURS, SECRET, THEIRS, Running, make_config, plugin, v1_inbound

KEY = nacl.signing.SigningKey.generate()
DISABLED_SECRET = "closed-profile-secret"
CLOSED = "+13125550102"
SAMPLES = [sample(name) for name in ("v1-inbound.json", "v1-delivery-status.json",
                                      "v2-message-received.json", "v2-message-finalized.json")]  # fmt: skip
NUMBERS = [OURS, THEIRS, CLOSED, "+13125550199", "3125550100", "+1 (312) 555-0100", "", "+", "ACME"]
ODD_TEXT = ["\ud800", "a\udfffb", "\x00", "😀" * 50, "\u202e", "x" * 2000, "", " ", "\r\n", "STOP"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    | st.sampled_from(NUMBERS + ODD_TEXT),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)  # fmt: skip


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, prefix + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found += paths(child, prefix + (i,))
    return found


@st.composite
def mutated(draw) -> Any:
    """A real Telnyx webhook with a few of its values replaced, deleted or retyped."""
    document = copy.deepcopy(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(0, 4))):
        path = draw(st.sampled_from(paths(document)))
        if not path:
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "number", "text", "text"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "number":
            parent[path[-1]] = draw(st.sampled_from(NUMBERS))
        elif action == "text":
            parent[path[-1]] = draw(st.sampled_from(ODD_TEXT) | st.text(max_size=20))
        else:
            parent[path[-1]] = draw(json_values)
    return document


@st.composite
def encoded(draw) -> bytes:
    """Mostly mutated webhooks in UTF-8 (they get furthest), sometimes anything at all."""
    # Hypothesis favours small integers: 0 is the common case here, the high values the odd ones.
    kind = draw(st.integers(0, 9))
    if kind == 9:
        return draw(st.binary(max_size=300))
    document = draw(json_values) if kind == 8 else draw(mutated())
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    odd = draw(st.integers(0, 5)) == 5
    encoding = draw(st.sampled_from(["utf-8-sig", "utf-16", "utf-32", "latin-1"])) if odd else "utf-8"
    try:
        body = text.encode(encoding)
    except UnicodeEncodeError:
        body = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 19)) == 19:  # a few bytes flipped
        position = draw(st.integers(0, max(0, len(body) - 1)))
        body = body[:position] + draw(st.binary(min_size=1, max_size=3)) + body[position + 1 :]
    return body


@st.composite
def webhooks(draw) -> tuple[bytes, dict[str, str]]:
    body = draw(encoded())
    mode = draw(st.sampled_from(["v1", "v1", "v1", "v1-closed", "v2", "v2", "v2", "garbage", "none", "stale"]))
    headers = {"content-type": draw(st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-16"]))}  # fmt: skip
    if mode == "v1":
        headers["x-telnyx-signature"] = sign_v1(body, SECRET)
    elif mode == "v1-closed":
        headers["x-telnyx-signature"] = sign_v1(body, DISABLED_SECRET)
    elif mode == "v2":
        headers.update(sign_v2(body, KEY))
    elif mode == "stale":
        headers["x-telnyx-signature"] = sign_v1(body, SECRET, int(time.time()) - 3600)
        headers.update(sign_v2(body, KEY, int(time.time()) - 3600))
    elif mode == "garbage":
        text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=80)
        headers["x-telnyx-signature"] = draw(text | st.just("t=1,h=") | st.just("t=,h=,t=2"))
        headers["telnyx-signature-ed25519"] = draw(text)
        headers["telnyx-timestamp"] = draw(text | st.just(str(int(time.time()))))
    return body, headers


def config(tmp_path):
    profiles = {
        "main": {"secret": SECRET, "numbers": [OURS], "plugins": ["echo"]},
        "closed": {"enabled": False, "secret": DISABLED_SECRET, "numbers": [CLOSED]},
    }
    public_key = base64.b64encode(bytes(KEY.verify_key)).decode()
    return make_config(tmp_path, ["echo"], profiles=profiles, telnyx={"public_key": public_key})


def echo():
    def handle_message(message, conversation):
        conversation.state["last"] = message.text
        conversation.state["media"] = [m.url for m in message.media]
        return f"echo {message.text}"

    return plugin("echo", handle_message=handle_message)


def test_random_and_mutated_webhooks_get_2xx_or_4xx_and_corrupt_nothing(tmp_path):
    with asyncio.Runner() as runner:
        run = Running(config(tmp_path), None, echo())
        runner.run(run.start())
        answers: dict[int, int] = {}
        try:

            @settings(max_examples=400, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
            @given(webhooks())
            def post(case: tuple[bytes, dict[str, str]]) -> None:
                body, headers = case
                raw = {name: value.encode("latin-1") for name, value in headers.items()}  # as on the wire
                response = runner.run(run.http.post("/webhooks/telnyx", content=body, headers=raw))
                answers[response.status_code] = answers.get(response.status_code, 0) + 1
                assert response.status_code in (200, 400, 401, 404, 413), (response.status_code, response.text)
                assert isinstance(response.json()["ok"], bool)
                if response.status_code >= 400:
                    assert response.json()["error"]

            post()
            runner.run(run.settle(30))
            # The worker is alive and the pipeline still works.
            sent_before = len(run.telnyx.calls)
            runner.run(run.text("still there?", sms_id="after-the-fuzz"))
            runner.run(run.settle())
            assert run.telnyx.texts()[sent_before:] == ["echo still there?"]
            assert run.bot.store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert run.bot.store.pending_inbound() == []
        finally:
            runner.run(run.stop())
    # The fuzzing did reach the store and the plugins, not only the front door.
    assert answers.get(200, 0) > 20 and answers.get(400, 0) > 20 and answers.get(401, 0) > 20, answers


any_text = st.lists(st.integers(0, 0x10FFFF).map(chr), max_size=40).map("".join)  # surrogates too


@st.composite
def genuine(draw) -> tuple[bytes, dict[str, str]]:
    """A correctly signed inbound message, V1 or V2, whose free-text fields hold anything."""
    text, sms_id = draw(any_text), draw(any_text)
    media = draw(st.lists(st.fixed_dictionaries({"url": any_text, "content_type": any_text | st.none(),
                                                 "size": st.integers() | st.none()}), max_size=2))  # fmt: skip
    if draw(st.booleans()):
        document = {"sms_id": sms_id, "direction": "inbound", "from": THEIRS, "to": OURS, "body": text, "media": media}
        body = json.dumps(document).encode()
        return body, {"x-telnyx-signature": sign_v1(body, SECRET)}
    document = copy.deepcopy(SAMPLES[2])
    payload = document["data"]["payload"]
    payload.update(id=sms_id or "x", text=text, media=[{**m, "sha256": None} for m in media])
    document["data"]["id"] = draw(any_text)
    body = json.dumps(document).encode()
    return body, sign_v2(body, KEY)


def test_any_text_in_a_genuine_message_is_stored_and_handled(tmp_path):
    with asyncio.Runner() as runner:
        run = Running(config(tmp_path), None, echo())
        runner.run(run.start())
        try:

            @settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
            @given(genuine())
            def post(case: tuple[bytes, dict[str, str]]) -> None:
                response = runner.run(run.post(*case))
                assert response.status_code in (200, 400), response.text
                if response.status_code == 400:  # only for a reason it names
                    assert "media" in response.json()["error"] or "data.payload.id" in response.json()["error"]

            post()
            runner.run(run.settle(30))
            assert run.bot.store.pending_inbound() == []
            statuses = {r["status"] for r in run.mdrs(direction="inbound")}
            assert statuses <= {"handled"}
            assert run.bot.store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            runner.run(run.stop())


def test_lone_surrogates_and_nul_are_kept_as_valid_text(tmp_path):
    """JSON can spell text SQLite cannot store; the message is kept, not refused or crashed on."""

    async def scenario() -> tuple[list[int], list[str], list[str]]:
        async with Running(config(tmp_path), None, echo()) as run:
            statuses = []
            for i, text in enumerate(['"\\ud83d"', '"a\\u0000b"', '"\\udfff\\ud800 x"']):
                body = f'{{"sms_id": "s{i}\\ud800", "from": "+13125550123", "to": "+13125550100", "body": {text}}}'.encode()
                statuses.append((await run.post(body, {"x-telnyx-signature": sign_v1(body, SECRET)})).status_code)
            await run.settle()
            return statuses, [r["text"] for r in run.mdrs(direction="inbound")], run.telnyx.texts()

    statuses, stored, sent = asyncio.run(scenario())
    assert statuses == [200, 200, 200]
    assert stored == ["\ufffd", "a\x00b", "\ufffd\ufffd x"]
    assert sent == ["echo \ufffd", "echo a\x00b", "echo \ufffd\ufffd x"]


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(tmp_path):
    """Chunked, with no Content-Length: the app stops reading once it is past the limit."""

    async def scenario() -> tuple[int, int]:
        run = Running(config(tmp_path), None, echo())
        await run.start()
        try:
            app = create_app(run.bot)
            pulled = 0
            chunk = b"x" * 4096

            async def receive() -> dict:
                nonlocal pulled
                pulled += len(chunk)
                return {"type": "http.request", "body": chunk, "more_body": pulled < 100 * MAX_BODY}

            statuses = []

            async def send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/webhooks/telnyx", "raw_path": b"/webhooks/telnyx",
                     "query_string": b"", "root_path": "", "server": ("bot", 80), "client": ("127.0.0.1", 1),
                     "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]}  # fmt: skip
            await app(scope, receive, send)
            return statuses[0], pulled
        finally:
            await run.stop()

    status, pulled = asyncio.run(scenario())
    assert status == 413
    assert pulled <= MAX_BODY + 4096


def test_a_declared_oversized_or_malformed_content_length_is_refused_unread(tmp_path):
    async def scenario() -> list[int]:
        async with Running(config(tmp_path), None, echo()) as run:
            results = []
            for length in (str(MAX_BODY + 1), "10000000000", "-1", "12a", ""):
                body, headers = v1_inbound("hi")
                response = await run.http.post("/webhooks/telnyx", content=body,
                                               headers={**headers, "content-length": length})  # fmt: skip
                results.append(response.status_code)
            return results

    assert asyncio.run(scenario()) == [413, 413, 400, 400, 400]


def test_the_webhook_route_answers_beside_starlettes_router_as_a_route_of_it_would(tmp_path):
    """POST /webhooks/telnyx skips Starlette's router: the router still answers its other methods
    and paths, and the answers carry a JSONResponse's headers."""

    async def scenario() -> list[tuple[int, str, str]]:
        async with Running(config(tmp_path), None, echo()) as run:
            body, headers = v1_inbound("hi")
            answers = [await run.http.post("/webhooks/telnyx", content=body, headers=headers),
                       await run.http.post("/webhooks/telnyx", content=b"[", headers=headers),
                       await run.http.get("/webhooks/telnyx"),
                       await run.http.post("/webhooks/telnyx/", content=body, headers=headers)]  # fmt: skip
            return [(a.status_code, a.headers.get("content-type", ""), a.headers.get("content-length", ""))
                    for a in answers]  # fmt: skip

    ok, bad, get, slash = asyncio.run(scenario())
    assert ok[:2] == (200, "application/json") and ok[2].isdigit()
    assert bad[:2] == (400, "application/json")
    assert get[0] == 405
    assert slash[0] == 307  # Starlette's redirect to the route without the slash


def test_a_client_gone_before_the_whole_body_gets_a_400_saying_so(tmp_path):
    async def scenario() -> list[dict]:
        async with Running(config(tmp_path), None, echo()) as run:
            messages = iter([{"type": "http.request", "body": b'{"sms_id"', "more_body": True},
                             {"type": "http.disconnect"}])  # fmt: skip
            sent: list[dict] = []

            async def receive() -> dict:
                return next(messages)

            async def send(message: dict) -> None:
                sent.append(message)

            scope = {"type": "http", "method": "POST", "path": "/webhooks/telnyx", "headers": []}
            await create_app(run.bot)(scope, receive, send)
            return sent

    start, body = asyncio.run(scenario())
    assert start["status"] == 400
    assert json.loads(body["body"]) == {"ok": False, "error": "client disconnected before sending the whole body"}


def test_a_real_server_refuses_an_endless_chunked_body(server_factory, fake_telnyx_server):
    from .test_e2e import config_text

    server = server_factory(config_text(fake_telnyx_server.url)).start()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /webhooks/telnyx HTTP/1.1\r\nhost: bot\r\ncontent-type: application/json\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")  # fmt: skip
        sock.settimeout(0.01)
        answer, sent = b"", 0
        chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
        while sent < 50 * MAX_BODY and b"\r\n\r\n" not in answer:
            try:
                sock.sendall(chunk)
                sent += 4096
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(5)
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 10 * MAX_BODY
    assert server.post(*v1_inbound("fine", secret="support-secret-e2e")).status_code == 200
    server.stop()
