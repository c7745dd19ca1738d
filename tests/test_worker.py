"""The sender: retries with backoff, final failures, opt-out safety, pacing per sending number."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from email.utils import formatdate
from itertools import pairwise

import httpx
import pytest

from bot_core.config import Config
from bot_core.store import BLOCKED, FAILED
from bot_core.worker import backoff

from .conftest import rows
from .harness import OTHER, OURS, THEIRS, Running, ScriptedTelnyx, eventually, make_config, plugin

# Each test runs on both engines (the config names $BOT_CORE_DATABASE).
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("database")]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def echo():
    return plugin("echo", handle_message=lambda message: f"re: {message.text}")


def gaps(calls) -> list[float]:
    return [b.at - a.at for a, b in pairwise(calls)]


def outbound(run, text: str) -> dict:
    (row,) = run.mdrs(direction="outbound", text=text)
    return row


# -- retries ------------------------------------------------------------------------------


def opted_out_v1() -> httpx.Response:
    return httpx.Response(400, json={"success": False, "status": 400, "code": "40300",
                                     "message": "Blocked due to STOP message"})  # fmt: skip


def opted_out_v2() -> httpx.Response:
    return httpx.Response(400, json={"errors": [{"code": "40300", "title": "Blocked due to STOP message",
                                                 "detail": "The recipient has opted out"}]})  # fmt: skip


@pytest.mark.parametrize(
    "failure",
    [500, 502, 503, 504, 429,
     httpx.ConnectError("connection refused"), httpx.ReadTimeout("timed out"), httpx.ConnectTimeout("timed out"),
     httpx.RemoteProtocolError("server disconnected")],
    ids=lambda f: str(f) if isinstance(f, int) else type(f).__name__,
)  # fmt: skip
async def test_transient_failures_are_retried_until_the_send_goes_through(tmp_path, failure):
    telnyx = ScriptedTelnyx()
    telnyx.then(failure, failure)
    async with Running(make_config(tmp_path, ["echo"]), telnyx, echo()) as run:
        await run.text("hi")
        await run.settle()
        assert [c.text for c in telnyx.calls] == ["re: hi"] * 3
        (row,) = rows(run.bot.store, "SELECT status, attempts, error, telnyx_id FROM mdrs WHERE direction = 'outbound'")
        assert row[0] == "queued" and row[2] is None and row[3]
        assert row[1] == 3


async def test_a_send_that_keeps_failing_is_marked_failed_with_the_error_after_max_attempts(tmp_path):
    telnyx = ScriptedTelnyx()
    telnyx.then(*[503] * 10)
    async with Running(make_config(tmp_path, ["echo"], sending={"max_attempts": 4}), telnyx, echo()) as run:
        await run.text("hi")
        await run.settle()
        assert len(telnyx.calls) == 4
        row = outbound(run, "re: hi")
        assert row["status"] == FAILED
        assert row["error"] == "Telnyx answered 503 (code 10007): scripted 503"
        ((attempts,),) = rows(run.bot.store, "SELECT attempts FROM mdrs WHERE id = ?", (row["id"],))
        assert attempts == 4


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
async def test_other_client_errors_are_final_at_once(tmp_path, status):
    telnyx = ScriptedTelnyx()
    telnyx.then(status)
    async with Running(make_config(tmp_path, ["echo"]), telnyx, echo()) as run:
        await run.text("hi")
        await run.settle()
        assert len(telnyx.calls) == 1
        row = outbound(run, "re: hi")
        assert row["status"] == FAILED and row["error"].startswith(f"Telnyx answered {status}")


async def test_backoff_grows_exponentially_with_jitter(tmp_path, monkeypatch):
    chosen: list[float] = []  # the delays the sender picked; a loaded machine only adds to the waits

    def recording(*args, **kwargs):
        chosen.append(backoff(*args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr("bot_core.worker.backoff", recording)
    telnyx = ScriptedTelnyx()
    telnyx.then(*[500] * 5)
    config = make_config(tmp_path, ["echo"], sending={"backoff_initial": "40ms", "backoff_max": "1s", "max_attempts": 6})
    async with Running(config, telnyx, echo()) as run:
        await run.text("hi")
        await run.settle()
    waits = gaps(telnyx.calls)
    assert len(waits) == len(chosen) == 5
    for attempt, (delay, wait) in enumerate(zip(chosen, waits, strict=True), 1):
        ceiling = 0.04 * 2 ** (attempt - 1)
        assert ceiling / 2 <= delay <= ceiling, (attempt, chosen)
        assert wait >= delay - 0.005, (attempt, waits, chosen)  # and it did wait that long


def test_backoff_is_capped_jittered_and_yields_to_retry_after():
    delays = {backoff(3, 1.0, 300.0) for _ in range(50)}
    assert all(2.0 <= d <= 4.0 for d in delays) and len(delays) > 40
    assert all(150.0 <= backoff(30, 1.0, 300.0) <= 300.0 for _ in range(20))
    assert backoff(1, 1.0, 300.0, retry_after=42.0) == 42.0
    assert backoff(10, 1.0, 300.0, retry_after=0.5) >= 150.0
    assert backoff(1, 1.0, 300.0, retry_after=86400.0) == 300.0  # Retry-After is capped by backoff_max


async def test_a_retry_after_longer_than_backoff_max_waits_only_backoff_max(tmp_path):
    telnyx = ScriptedTelnyx()
    telnyx.then(httpx.Response(429, headers={"retry-after": "86400"}, json={"code": "10011", "message": "slow down"}))
    async with Running(make_config(tmp_path, ["echo"]), telnyx, echo()) as run:  # backoff_max = 50ms
        await run.text("hi")
        assert await run.bot.idle(timeout=30)  # a day's Retry-After would never settle in time
    assert len(telnyx.calls) == 2


@pytest.mark.parametrize("header", ["1", "date"])
async def test_429_waits_as_long_as_retry_after_says(tmp_path, header):
    def slow_down(request):  # an HTTP date is written as the answer leaves, as Telnyx would
        value = "1" if header == "1" else formatdate(time.time() + 2, usegmt=True)
        return httpx.Response(429, headers={"retry-after": value}, json={"code": "10011", "message": "slow down"})

    telnyx = ScriptedTelnyx()
    telnyx.then(slow_down)
    async with Running(make_config(tmp_path, ["echo"], sending={"backoff_max": "5s"}), telnyx, echo()) as run:
        await run.text("hi")
        await run.settle()
    assert len(telnyx.calls) == 2
    # backoff_initial is 10 ms: only Retry-After explains the wait (an HTTP date has 1 s precision).
    assert gaps(telnyx.calls)[0] >= 0.95


async def test_retries_keep_a_conversations_replies_in_order(tmp_path):
    telnyx = ScriptedTelnyx()
    telnyx.then(500, 500, 429, 500)

    def handle_message(message):
        return [f"{message.text} 1", f"{message.text} 2", f"{message.text} 3"]

    async with Running(make_config(tmp_path, ["multi"]), telnyx, plugin("multi", handle_message=handle_message)) as run:
        await run.text("a")
        await run.text("b")
        await run.settle()
    assert telnyx.texts() == ["a 1", "a 2", "a 3", "b 1", "b 2", "b 3"]
    # No reply was even attempted before the one ahead of it went through.
    attempted = [c.text for c in telnyx.calls]
    assert attempted == sorted(attempted, key=["a 1", "a 2", "a 3", "b 1", "b 2", "b 3"].index)


async def test_a_failing_conversation_does_not_hold_up_others(tmp_path):
    telnyx = ScriptedTelnyx()
    telnyx.then(*[503] * 100, to=THEIRS)
    config = make_config(tmp_path, ["echo"], sending={"backoff_initial": "200ms", "backoff_max": "200ms"})
    async with Running(config, telnyx, echo()) as run:
        await run.text("stuck")
        for i in range(5):
            await run.text(f"m{i}", from_=f"+1312555016{i}")
        await eventually(lambda: len(telnyx.texts()) == 5, timeout=1)


# -- opt-out safety -----------------------------------------------------------------------


@pytest.mark.parametrize("refusal", [opted_out_v1, opted_out_v2], ids=["v1", "v2"])
async def test_40300_is_final_and_records_the_opt_out_for_that_profile(tmp_path, refusal):
    telnyx = ScriptedTelnyx()
    telnyx.then(refusal())
    profiles = {
        "main": {"secret": "main-secret", "numbers": [OURS], "plugins": ["multi"]},
        "other": {"secret": "other-secret", "numbers": [OTHER], "plugins": ["multi"]},
    }

    def handle_message(message):
        return [f"{message.text} 1", f"{message.text} 2"]

    config = make_config(tmp_path, ["multi"], profiles=profiles)
    async with Running(config, telnyx, plugin("multi", handle_message=handle_message)) as run:
        await run.post(*_signed("a", OURS, "main-secret"))
        await run.settle()
        assert len(telnyx.calls) == 1  # not retried, and the reply queued behind it is not tried
        first, second = run.mdrs(direction="outbound")
        assert first["status"] == FAILED and "40300" in first["error"]
        assert (second["status"], second["error"]) == (BLOCKED, "recipient opted out")
        assert run.bot.is_opted_out("main", THEIRS) and not run.bot.is_opted_out("other", THEIRS)
        assert run.bot.store.consent_log()[-1]["source"] == "telnyx 40300"
        # Later replies and proactive sends from that profile are blocked; another profile still sends.
        await run.post(*_signed("b", OURS, "main-secret"))
        proactive = run.bot.send(THEIRS, "news", profile="main")
        await run.post(*_signed("c", OTHER, "other-secret"))
        await run.settle()
        assert telnyx.texts() == ["c 1", "c 2"]
        assert run.bot.store.mdr(proactive)["status"] == BLOCKED
        assert {r["status"] for r in run.mdrs(direction="outbound", **{"from": OURS})} == {FAILED, BLOCKED}
        # Until the number opts back in.
        run.bot.opt_in("main", THEIRS, "START")
        await run.post(*_signed("d", OURS, "main-secret"))
        await run.settle()
        assert telnyx.texts()[-2:] == ["d 1", "d 2"]


def _signed(text: str, to: str, secret: str):
    from .harness import v1_inbound

    return v1_inbound(text, to=to, secret=secret)


def stalling_telnyx() -> tuple[ScriptedTelnyx, asyncio.Event]:
    """A fake whose first send hangs until the returned event is set; later sends succeed."""
    release = asyncio.Event()

    async def stall(request):
        await release.wait()
        return None

    telnyx = ScriptedTelnyx()
    telnyx.then(stall)
    return telnyx, release


async def test_a_reply_already_queued_is_blocked_when_the_recipient_opts_out_before_it_is_sent(tmp_path):
    telnyx, release = stalling_telnyx()
    async with Running(make_config(tmp_path, ["multi"]), telnyx,
                       plugin("multi", handle_message=lambda: ["one", "two"])) as run:  # fmt: skip
        await run.text("hi")
        await eventually(lambda: telnyx.calls)
        run.bot.opt_out("main", THEIRS, "test")
        release.set()
        await run.settle()
        assert [c.text for c in telnyx.calls] == ["one"]
        assert outbound(run, "two")["status"] == BLOCKED


# -- pacing -------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["sqlite"])  # a wall-clock bound: on PostgreSQL, round trips on a loaded machine
async def test_unpaced_by_default(tmp_path):
    async with Running(make_config(tmp_path, ["echo"]), None, echo()) as run:
        started = time.monotonic()
        for i in range(20):
            run.bot.send(f"+131255503{i:02d}", f"n{i}", from_number=OURS)
        await run.settle()
        assert len(run.telnyx.texts()) == 20
        assert time.monotonic() - started < 1


def record_pacing(run) -> list[tuple[int, float, float, float]]:
    """Each call the sender makes to take a pacing slot: (MDR id, asked, answered, seconds to wait).

    The store takes a number's slot at an instant between asked and answered (wall clock) and
    spaces one number's slots 1/rate apart, however late a send then reaches Telnyx."""
    store, calls = run.bot.store, []
    start_send = store.start_send

    def recording(mdr_id, *args, **kwargs):
        asked = time.time()
        wait = start_send(mdr_id, *args, **kwargs)
        calls.append((mdr_id, asked, time.time(), wait))
        return wait

    store.start_send = recording
    return calls


def slots(run, calls) -> dict[str, list[tuple[float, float]]]:
    """(asked, answered) of each slot taken, by sending number, in order."""
    number = {row["id"]: row["from"] for row in run.mdrs(direction="outbound")}
    taken: dict[str, list[tuple[float, float]]] = {}
    for mdr_id, asked, answered, wait in sorted(calls, key=lambda call: call[2]):
        if not wait:
            taken.setdefault(number[mdr_id], []).append((asked, answered))
    return taken


def assert_paced(taken: list[tuple[float, float]], rate: float) -> None:
    # Answered of a slot minus asked of the one before bounds their real distance from above.
    assert all(later[1] - earlier[0] >= 1 / rate for earlier, later in pairwise(taken)), taken


async def test_pacing_spaces_sends_per_number_and_numbers_never_wait_for_each_other(tmp_path):
    config = make_config(tmp_path, ["echo"], sending={"rate": 5})
    async with Running(config, None, echo()) as run:
        calls = record_pacing(run)
        for i in range(5):
            run.bot.send(f"+131255504{i:02d}", f"paced {i}", from_number=OURS)
        for i in range(5):
            run.bot.send(f"+131255505{i:02d}", f"other {i}", from_number=OTHER)
        await run.settle()
        taken = slots(run, calls)
    assert len(taken[OURS]) == len(taken[OTHER]) == 5 and len(run.telnyx.texts()) == 10
    assert_paced(taken[OURS], 5)
    assert_paced(taken[OTHER], 5)
    # OTHER has its own 5/s budget: it starts at once, not after OURS's queue.
    assert taken[OTHER][0][1] < taken[OURS][1][1]


async def test_a_stalled_number_does_not_hold_up_another(tmp_path):
    telnyx, release = stalling_telnyx()
    async with Running(make_config(tmp_path, ["echo"]), telnyx, echo()) as run:
        run.bot.send(THEIRS, "stalls", from_number=OURS)
        await eventually(lambda: telnyx.calls)
        for i in range(5):
            run.bot.send(f"+131255506{i:02d}", f"goes {i}", from_number=OTHER)
        await eventually(lambda: len(telnyx.texts()) == 5, timeout=1)
        release.set()
        await run.settle()
        assert len(telnyx.texts()) == 6


async def test_per_profile_and_per_number_rates_override_the_default(tmp_path):
    profiles = {"main": {"secret": "s", "numbers": [OURS, OTHER], "plugins": ["echo"], "send_rate": 4}}
    data = {"bot": {"database": "bot.db"}, "telnyx": {"api_base": "http://telnyx.test"},
            "profiles": profiles, "numbers": {OTHER: {"send_rate": 0}}}  # fmt: skip
    config = Config.from_dict(data, base_dir=tmp_path)
    async with Running(config, None, echo()) as run:
        calls = record_pacing(run)
        for i in range(3):
            run.bot.send(f"+131255507{i:02d}", f"p{i}", from_number=OURS)
            run.bot.send(f"+131255508{i:02d}", f"u{i}", from_number=OTHER)
        await run.settle()
        taken = slots(run, calls)
        unpaced = [wait for mdr_id, _, _, wait in calls if run.bot.store.mdr(mdr_id)["from"] == OTHER]
    assert len(taken[OURS]) == len(taken[OTHER]) == 3 and len(run.telnyx.texts()) == 6
    assert_paced(taken[OURS], 4)
    assert unpaced == [0.0] * 3  # never told to wait


# -- robustness ---------------------------------------------------------------------------


async def test_an_unexpected_error_before_sending_is_retried_in_order(tmp_path, caplog, monkeypatch):
    async with Running(make_config(tmp_path, ["multi"]), None,
                       plugin("multi", handle_message=lambda: ["one", "two"])) as run:  # fmt: skip
        start_send = run.bot.store.start_send
        failures = []

        def flaky(mdr_id, owner=None, *, rate=0.0):
            if not failures:
                failures.append(mdr_id)
                raise sqlite3.OperationalError("disk I/O error")
            return start_send(mdr_id, owner, rate=rate)

        monkeypatch.setattr(run.bot.store, "start_send", flaky)
        await run.text("hi")
        await run.settle()
        assert run.telnyx.texts() == ["one", "two"]
        assert len(run.telnyx.calls) == 2  # the failed mark was never followed by a request
        assert failures and "cannot prepare it (disk I/O error)" in caplog.text


async def test_idle_waits_for_a_send_waiting_out_its_backoff(tmp_path):
    telnyx = ScriptedTelnyx()
    telnyx.then(503)
    config = make_config(tmp_path, ["echo"], sending={"backoff_initial": "300ms", "backoff_max": "300ms"})
    async with Running(config, telnyx, echo()) as run:
        await run.text("hi")
        assert not await run.bot.idle(0.1)  # the retry is still due
        assert await run.bot.idle(5)
        assert telnyx.texts() == ["re: hi"]
