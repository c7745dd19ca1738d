"""The Telnyx clients: Telnyx's answers classified for retrying, in V1 and V2, without secrets."""

from __future__ import annotations

import socket
import time
from email.utils import formatdate

import httpx
import pytest

from bot_core.errors import SendError
from bot_core.telnyx import V1Client, V2Client

pytestmark = pytest.mark.anyio

SECRET = "profile-secret-never-shown"
API_KEY = "KEY-never-shown"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def answering(response: httpx.Response) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: response)


async def send(client) -> object:
    try:
        return await client.send(secret=SECRET, from_="+13125550100", to="+13125550123", text="hi", webhook_url=None)
    finally:
        await client.aclose()


async def refusal(version: int, response: httpx.Response, base: str = "http://telnyx.test") -> SendError:
    transport = answering(response)
    client = V1Client(base, 5, transport) if version == 1 else V2Client(base, 5, transport, API_KEY)
    with pytest.raises(SendError) as info:
        await send(client)
    assert SECRET not in str(info.value) and API_KEY not in str(info.value)
    return info.value


V1_STOP = {"success": False, "status": 400, "code": "40300", "message": "Blocked due to STOP message"}
V2_STOP = {"errors": [{"code": "40300", "title": "Blocked due to STOP message", "detail": "opted out"}]}


@pytest.mark.parametrize(("version", "body"), [(1, V1_STOP), (2, V2_STOP)])
@pytest.mark.parametrize("status", [400, 403, 422, 429, 500])
async def test_40300_means_opted_out_and_is_never_retried(version, body, status):
    error = await refusal(version, httpx.Response(status, json=body))
    assert error.opted_out and not error.retryable and error.code == "40300"
    assert "40300" in error.reason


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("status", "retryable"), [(429, True), (500, True), (502, True), (503, True),
                                                   (400, False), (401, False), (404, False), (422, False)])  # fmt: skip
async def test_429_and_5xx_are_retryable_other_4xx_are_final(version, status, retryable):
    body = {"code": "10007", "message": "boom"} if version == 1 else {"errors": [{"code": "10007", "detail": "boom"}]}
    error = await refusal(version, httpx.Response(status, json=body))
    assert error.retryable is retryable and not error.opted_out
    assert error.reason == f"Telnyx answered {status} (code 10007): boom"


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"", b"[1, 2]"])
async def test_an_error_without_a_json_object_is_still_classified(body):
    assert (await refusal(1, httpx.Response(502, content=body))).retryable
    assert not (await refusal(1, httpx.Response(400, content=body))).retryable


async def test_a_200_without_a_json_object_is_retried_rather_than_taken_for_sent():
    assert (await refusal(1, httpx.Response(200, content=b"oops"))).retryable


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [("7", 7, 7), ("2.5", 2.5, 2.5), ("-3", 0, 0), (None, None, None), ("soon", None, None)],
)
async def test_retry_after_in_seconds(header, low, high):
    headers = {"retry-after": header} if header is not None else {}
    error = await refusal(1, httpx.Response(429, headers=headers, json={"code": "10011"}))
    assert error.retry_after == low if low is None else low <= error.retry_after <= high


async def test_retry_after_as_an_http_date():
    header = formatdate(time.time() + 30, usegmt=True)
    error = await refusal(2, httpx.Response(429, headers={"retry-after": header}, json={"errors": []}))
    assert 28 <= error.retry_after <= 31


async def test_a_refused_connection_is_retryable():
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SendError) as info:
        await send(V1Client(f"http://127.0.0.1:{port}", 5, None))
    assert info.value.retryable and info.value.reason.startswith("cannot reach Telnyx")


async def test_a_stalled_telnyx_times_out_and_is_retryable():
    with socket.socket() as server:  # accepts the connection (backlog) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        client = V2Client(f"http://127.0.0.1:{server.getsockname()[1]}", 0.3, None, API_KEY)
        started = time.monotonic()
        with pytest.raises(SendError) as info:
            await send(client)
    assert info.value.retryable and "did not answer in time" in info.value.reason
    assert 0.25 < time.monotonic() - started < 3


async def test_v1_sends_the_profile_secret_and_v2_the_api_key():
    seen = []

    def record(request):
        seen.append(request)
        return httpx.Response(200, json={"sms_id": "s1", "status": "queued", "data": {"id": "m1", "to": []}})

    result = await send(V1Client("http://telnyx.test", 5, httpx.MockTransport(record)))
    assert result.telnyx_id == "s1"
    result = await send(V2Client("http://telnyx.test/v2", 5, httpx.MockTransport(record), API_KEY))
    assert result.telnyx_id == "m1"
    assert seen[0].headers["x-profile-secret"] == SECRET and "authorization" not in seen[0].headers
    assert seen[1].headers["authorization"] == f"Bearer {API_KEY}" and "x-profile-secret" not in seen[1].headers
