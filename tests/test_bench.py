"""The bench's lean fake Telnyx (bench/lean_telnyx.py) answers bot-core as FakeTelnyx does.

The bench replaced FakeTelnyx by a lean server so that the fake costs the server under test
little CPU; these tests hold its answers to FakeTelnyx's, through bot-core's own Telnyx client,
so the two cannot drift apart silently.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot_core.telnyx import V1Client
from bot_core.testing import FakeTelnyx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from lean_telnyx import LeanTelnyx  # noqa: E402
from services import Fake  # noqa: E402

pytestmark = pytest.mark.anyio

OURS, CUSTOMER = "+13125550100", "+13125550123"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def lean():
    fake = LeanTelnyx()
    url = await fake.start()
    yield fake, url
    fake.close()


@pytest.fixture
def full():
    with FakeTelnyx() as fake:
        yield fake


async def send(url: str, text: str, webhook_url: str | None = None) -> Any:
    client = V1Client(url, 5, None)
    try:
        return await client.send(secret="s", from_=OURS, to=CUSTOMER, text=text, webhook_url=webhook_url)
    finally:
        await client.aclose()


async def post(url: str, json: Any) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(url + "/messages", json=json, headers={"x-profile-secret": "s"})


def without_id(answer: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(answer.pop("sms_id"), str)
    return answer


@pytest.mark.parametrize("text", ["echo: b17", "héllo 🙂 " * 30])
async def test_bot_cores_client_reads_the_same_result_from_both(lean, full, text):
    fake, url = lean
    ours, theirs = await send(url, text, "http://bot.test/hook"), await send(full.url, text, "http://bot.test/hook")
    assert ours.telnyx_id and theirs.telnyx_id and ours.telnyx_id != theirs.telnyx_id
    assert (ours.status, ours.parts) == (theirs.status, theirs.parts)
    assert ours.parts == (1 if text.isascii() else 5)
    [(at, recorded)] = fake.take()
    assert recorded == text and at == pytest.approx(full.sent[0].at, abs=5)


@pytest.mark.parametrize(
    "payload",
    [
        {"from": OURS, "to": CUSTOMER, "body": "hi", "delivery_status_webhook_url": "http://bot.test/hook"},
        {"from": OURS, "to": CUSTOMER, "body": "ü"},
        {"from": OURS, "to": 7, "body": "hi"},
        ["not", "an", "object"],
    ],
)
async def test_the_same_status_and_json(lean, full, payload):
    _, url = lean
    ours, theirs = await post(url, payload), await post(full.url, payload)
    assert ours.status_code == theirs.status_code
    assert ours.headers["content-type"] == theirs.headers["content-type"]
    if ours.status_code == 200:
        assert without_id(ours.json()) == without_id(theirs.json())
    else:
        assert ours.content == theirs.content


def test_the_bench_process_counts_distinct_texts_and_takes_what_arrived():
    fake = Fake()
    try:

        async def replies() -> None:
            for text in ("a", "b", "a"):  # "a" twice: Telnyx received it twice, it counts once
                await send(fake.url, text)

        asyncio.run(replies())
        assert fake.wait_for(2, 10) and fake.count() == 2
        assert [text for _, text in fake.take()] == ["a", "b", "a"]
        assert fake.count() == 0 and fake.take() == []
    finally:
        fake.stop()


def test_a_take_bigger_than_the_pipes_buffer_arrives_whole():
    fake = Fake()
    try:

        async def replies() -> None:
            client = V1Client(fake.url, 5, None)
            text = "x" * 1000  # 2,000 of them: 2 MB to send back, far more than a socket's buffer
            await asyncio.gather(*(client.send(secret="s", from_=OURS, to=CUSTOMER, text=f"{i}{text}",
                                               webhook_url=None) for i in range(2000)))  # fmt: skip
            await client.aclose()

        asyncio.run(replies())
        assert fake.wait_for(2000, 30)
        fake._pipe.send("take")  # Fake.take, with this process busy elsewhere while the fake answers
        time.sleep(0.5)
        taken: list[list[tuple[float, str]]] = []
        reader = threading.Thread(target=lambda: taken.append(fake._pipe.recv()), daemon=True)
        reader.start()  # a thread: a half-sent answer would leave recv waiting forever
        reader.join(30)
        assert taken, "the fake's answer never arrived whole"
        assert sorted(int(text[:-1000]) for _, text in taken[0]) == list(range(2000))
    finally:
        fake.stop()
