"""The flows plugin: triggers, steps and validation, exit and expiry, restarts, recorded answers, post_to."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import bot_core_flows
from bot_core import ConfigError
from bot_core.testing import BotTester, FakeClock, FakeTelnyx

from .conftest import wait_for

# Each test runs on both engines (the config names $BOT_CORE_DATABASE).
pytestmark = pytest.mark.usefixtures("database")

NUMBER, CUSTOMER = "+13125550100", "+13125550123"
SIGNUP = {
    "trigger": "JOIN",
    "expire_after": "1h",
    "expiry_message": "Your signup timed out. Text JOIN to start again.",
    "steps": [
        {"ask": "What's your name?", "save_as": "name"},
        {"ask": "Thanks {name}. What's your ZIP code?", "save_as": "zip", "regex": "^[0-9]{5}$",
         "retry": "Please send a 5-digit ZIP code."},
    ],
    "done": "Thanks {name}! You're signed up for alerts in {zip}.",
}  # fmt: skip


def config(flows=None, plugins=("flows", "fallback"), fallback="Sorry?"):
    return {"bot": {"database": "${BOT_CORE_DATABASE:-bot.db}"}, "profiles": {"support": {
        "secret": "s", "numbers": [NUMBER], "plugins": list(plugins),
        "plugin_config": {"flows": {"signup": SIGNUP} if flows is None else flows, "fallback": {"text": fallback}},
    }}}  # fmt: skip


def submissions(bot):
    return [row for _, row in bot.bot.plugin_store("flows").items("submission:")]


def deliveries(bot):
    """Delivery attempts scheduled (the plugin's pending post timers): with none, nothing more
    will be posted."""
    return list(bot.bot.db.query("SELECT id FROM timers WHERE plugin = 'flows' AND name = 'post' AND status = 'pending'"))


def test_the_signup_flow_asks_checks_retries_confirms_and_records(tmp_path):
    clock = FakeClock(datetime(2026, 3, 2, 16, 0, tzinfo=UTC))
    with BotTester(config(), tmp_path=tmp_path, clock=clock) as bot:
        bot.transcript([
            ("JOIN", "What's your name?"),
            ("Ann", "Thanks Ann. What's your ZIP code?"),
            ("6060", "Please send a 5-digit ZIP code."),
            ("606011", "Please send a 5-digit ZIP code."),
            (" 60601 ", "Thanks Ann! You're signed up for alerts in 60601."),
            ("hello", "Sorry?"),  # the flow is over: the next message is an ordinary one
        ])  # fmt: skip
        assert "flows" not in bot.state()
        [row] = submissions(bot)
        assert (row["flow"], row["profile"]) == ("signup", "support")
        assert (row["from_number"], row["to_number"]) == (CUSTOMER, NUMBER)
        assert row["answers"] == {"name": "Ann", "zip": "60601"}
        assert row["completed_at"] == "2026-03-02T16:00:00.000+00:00"
        assert row["post_status"] is None  # no post_to


@pytest.mark.parametrize("text, starts", [
    ("join", True), ("Join!", True), ("JOIN please", True), ("  join,  ", True), ("rejoined", False),
    ("joined", False), ("I'd like to join", False),
])  # fmt: skip
def test_the_trigger_is_the_whole_message_or_its_first_word(tmp_path, text, starts):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        assert bot.text(text) == (["What's your name?"] if starts else ["Sorry?"])


def test_an_active_flow_is_not_hijacked_by_another_flows_trigger(tmp_path):
    survey = {"trigger": "SURVEY", "steps": [{"ask": "Rate us 1-5", "save_as": "score", "type": "number"}],
              "done": "You gave {score}."}  # fmt: skip
    with BotTester(config({"signup": SIGNUP, "survey": survey}), tmp_path=tmp_path) as bot:
        bot.transcript([
            ("survey", "Rate us 1-5"),
            ("join", "Please reply with a number."),
            ("4", "You gave 4."),
            ("join", "What's your name?"),
            ("Survey", "Thanks Survey. What's your ZIP code?"),
        ])  # fmt: skip


def test_the_exit_word_leaves_the_flow(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        bot.transcript([
            ("join", "What's your name?"),
            ("exit", "OK, stopped. Text JOIN to start again."),
            ("hi", "Sorry?"),
            ("join", "What's your name?"),
            ("Exit Smith", "Thanks Exit Smith. What's your ZIP code?"),  # only the whole message exits
            ("EXIT!", "OK, stopped. Text JOIN to start again."),
        ])  # fmt: skip
        assert submissions(bot) == []
        assert bot.advance("2h") == []  # leaving cancelled the expiry


def test_exit_word_and_message_are_configurable(tmp_path):
    flow = {**SIGNUP, "exit_word": "quit signup", "exit_message": "Signup cancelled."}
    with BotTester(config({"signup": flow}), tmp_path=tmp_path) as bot:
        bot.transcript([("join", "What's your name?"), ("EXIT", "Thanks EXIT. What's your ZIP code?"),
                        ("Quit signup.", "Signup cancelled.")])  # fmt: skip


def test_a_flow_expires_after_idle_time_with_its_message(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        assert bot.text("join") == ["What's your name?"]
        assert bot.advance("59m") == []
        assert bot.text("Ann") == ["Thanks Ann. What's your ZIP code?"]  # activity restarts the hour
        assert bot.advance("59m") == []
        assert bot.advance("1m") == ["Your signup timed out. Text JOIN to start again."]
        assert "flows" not in bot.state()
        assert bot.text("60601") == ["Sorry?"]
        assert bot.advance("5h") == []  # it fired once


def test_a_wrong_answer_also_restarts_the_idle_clock(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        bot.text("join")
        bot.text("Ann")
        bot.advance("50m")
        assert bot.text("nope") == ["Please send a 5-digit ZIP code."]
        assert bot.advance("50m") == []
        assert bot.text("60601") == ["Thanks Ann! You're signed up for alerts in 60601."]


def test_without_an_expiry_message_a_flow_ends_quietly(tmp_path):
    flow = {**SIGNUP, "expire_after": "15m"}
    del flow["expiry_message"]
    with BotTester(config({"signup": flow}), tmp_path=tmp_path) as bot:
        bot.text("join")
        assert bot.advance("15m") == []
        assert "flows" not in bot.state()
        assert bot.text("Ann") == ["Sorry?"]


def test_an_answer_after_the_expiry_time_gets_the_expiry_message_once(tmp_path):
    with BotTester(config(plugins=["flows"]), tmp_path=tmp_path) as bot:
        bot.text("join")
        bot.clock.advance("2h")  # the timer has not been handed over yet; the answer may come first
        sent = bot.text("Ann") + bot.advance(0)
        assert sent == ["Your signup timed out. Text JOIN to start again."]
        assert "flows" not in bot.state() and submissions(bot) == []


def test_flow_state_and_its_expiry_survive_a_restart(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        bot.text("join")
        bot.text("Ann")
        bot.restart()
        assert bot.text("60601") == ["Thanks Ann! You're signed up for alerts in 60601."]
        bot.text("join")
        bot.restart()
        assert bot.advance("1h") == ["Your signup timed out. Text JOIN to start again."]


def test_an_expiry_that_fell_due_while_stopped_fires_at_startup(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        bot.text("join")
        bot.portal.call(bot.bot.stop)
        bot.clock.advance("3h")
        bot.portal.call(bot.bot.start)
        wait_for(lambda: bot.messages(text="Your signup timed out. Text JOIN to start again."))


def test_opted_out_mid_flow_the_expiry_is_blocked(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        bot.text("join")
        bot.text("STOP")
        assert bot.advance("1h") == []
        [blocked] = bot.messages(direction="outbound", status="blocked")
        assert blocked["text"] == "Your signup timed out. Text JOIN to start again."


@pytest.mark.parametrize("step, answers", [
    ({"choices": ["Small", "Medium", "Large"]},
     [("huge", "Please reply with one of: Small, Medium, Large."), ("medium!", "= Medium")]),
    ({"type": "number", "min": 1, "max": 10},
     [("lots", "Please reply with a number from 1 to 10."), ("11", "Please reply with a number from 1 to 10."),
      ("7", "= 7")]),
    ({"type": "number"}, [("1,200", "= 1200")]),
    ({"type": "number", "max": 5}, [("6", "Please reply with a number of at most 5."), ("5", "= 5")]),
    ({"type": "number", "min": 0}, [("-1", "Please reply with a number of at least 0."), ("2.5", "= 2.5")]),
    ({"type": "date"},
     [("tomorrow", "Please reply with a date like 2026-03-14 or 03/14/2026."),
      ("02/30/2026", "Please reply with a date like 2026-03-14 or 03/14/2026."), ("3/7/2026", "= 2026-03-07")]),
    ({"type": "date"}, [("2026-12-25", "= 2026-12-25")]),
    ({"regex": "[A-Z]{2}[0-9]{4}", "retry": "Send an order number like AB1234."},
     [("ab1234", "Send an order number like AB1234."), ("AB1234", "= AB1234")]),
    ({}, [("", "Sorry, I didn't get that. Your answer?"), ("anything", "= anything")]),
])  # fmt: skip
def test_answers_are_validated_and_kept_in_their_type(tmp_path, step, answers):
    flow = {"trigger": "ASK", "steps": [{"ask": "Your answer?", "save_as": "value", **step}], "done": "= {value}"}
    with BotTester(config({"ask": flow}), tmp_path=tmp_path) as bot:
        bot.transcript([("ask", "Your answer?"), *answers])
        [row] = submissions(bot)
        kept = row["answers"]["value"]
        assert f"= {kept}" == answers[-1][1]
        if step.get("type") == "number":
            assert isinstance(kept, (int, float))


def test_several_profiles_and_conversations_keep_separate_flows(tmp_path):
    cfg = config()
    cfg["profiles"]["other"] = {"secret": "s2", "numbers": ["+13125550101"], "plugins": ["flows"],
                                "plugin_config": {"flows": {"rsvp": {"trigger": "RSVP", "steps": [
                                    {"ask": "How many guests?", "save_as": "guests", "type": "number"}],
                                    "done": "See you, party of {guests}."}}}}  # fmt: skip
    with BotTester(cfg, tmp_path=tmp_path) as bot:
        assert bot.text("join") == ["What's your name?"]
        assert bot.text("join", from_="+13125550124") == ["What's your name?"]
        assert bot.text("rsvp", to="+13125550101") == ["How many guests?"]
        assert bot.text("join", to="+13125550101") == ["Please reply with a number."]
        assert bot.text("Ann") == ["Thanks Ann. What's your ZIP code?"]
        assert bot.text("Bob", from_="+13125550124") == ["Thanks Bob. What's your ZIP code?"]
        assert bot.text("3", to="+13125550101") == ["See you, party of 3."]


def test_a_flow_removed_from_the_config_leaves_no_stuck_conversation(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        bot.text("join")
    renamed = {"register": SIGNUP}
    with BotTester(config(renamed), tmp_path=tmp_path) as bot:
        bot.replies()  # what the first bot sent
        assert bot.text("Ann") == ["Sorry?"]
        assert "flows" not in bot.state()
        assert bot.advance("2h") == []


def test_a_completing_message_handled_again_is_recorded_once(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        complete_signup(bot)
        [row] = submissions(bot)
        flow = bot_core_flows.parse(bot.config.profiles["support"].plugin_config["flows"])["signup"]
        again = bot.portal.call(lambda: bot_core_flows._posters[bot.bot].record(
            message_id=row["message_id"], conversation_id=row["conversation_id"], flow=flow, profile="support",
            from_number=CUSTOMER, to_number=NUMBER, answers={"name": "Ann", "zip": "60601"}))  # fmt: skip
        assert again == (row["id"], False) and len(submissions(bot)) == 1  # sandboxed: nothing to deliver


# -- post_to ------------------------------------------------------------------------------------


class Receiver:
    """A real HTTP server on loopback that records JSON posts and answers as scripted."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict, dict]] = []
        self.statuses: list[int] = []
        # Bound now, listening only once entered: until then connections are refused, and no
        # other test can take the port meanwhile.
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/signups"
        self.app = Starlette(routes=[Route("/signups", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> JSONResponse:
        self.requests.append((json.loads(await request.body()), dict(request.headers)))
        status = self.statuses.pop(0) if self.statuses else 200
        return JSONResponse({"ok": status < 400}, status)

    def __enter__(self) -> Receiver:
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self._sock.close()


def posting(url, **settings):
    return config({"signup": {**SIGNUP, "post_to": url, "post_backoff": "50ms", **settings}})


def live(config, tmp_path, **kwargs):
    """A bot that is not in sandbox mode (it sends to a fake Telnyx), so post_to is used."""
    return BotTester(config, tmp_path=tmp_path, telnyx=FakeTelnyx(), **kwargs)


def retried_until(bot, predicate, timeout: float = 10):
    """Move the bot's clock on until ``predicate(row)`` holds: each retry is a timer on that clock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = submissions(bot)[0]
        if predicate(row):
            return row
        bot.advance("1s")
    raise AssertionError(f"not retried as expected within {timeout} s: {submissions(bot)}")


def complete_signup(bot, name="Ann"):
    bot.transcript([("join", "What's your name?"), (name, f"Thanks {name}. What's your ZIP code?"),
                    ("60601", f"Thanks {name}! You're signed up for alerts in 60601.")])  # fmt: skip


def test_completed_answers_are_posted_as_json(tmp_path):
    clock = FakeClock(datetime(2026, 3, 2, 16, 0, tzinfo=UTC))
    with Receiver() as receiver, live(posting(receiver.url), tmp_path, clock=clock) as bot:
        complete_signup(bot)
        body, headers = wait_for(lambda: receiver.requests and receiver.requests[0])
        assert body == {"flow": "signup", "profile": "support", "from": CUSTOMER, "to": NUMBER,
                        "answers": {"name": "Ann", "zip": "60601"}, "completed_at": "2026-03-02T16:00:00.000+00:00"}
        assert headers["content-type"] == "application/json"
        assert headers["idempotency-key"] == f"bot-core-flows-{submissions(bot)[0]['id']}"
        wait_for(lambda: submissions(bot)[0]["post_status"] == "delivered")
        assert submissions(bot)[0]["post_attempts"] == 1


def test_5xx_answers_are_retried_with_backoff_until_accepted(tmp_path):
    with Receiver() as receiver, live(posting(receiver.url), tmp_path) as bot:
        receiver.statuses = [503, 500, 502]
        complete_signup(bot)
        retried_until(bot, lambda row: row["post_status"] == "delivered")
        assert len(receiver.requests) == 4
        assert {json.dumps(body) for body, _ in receiver.requests} == {json.dumps(receiver.requests[0][0])}
        assert submissions(bot)[0]["post_attempts"] == 4


def test_a_4xx_answer_is_final(tmp_path):
    with Receiver() as receiver, live(posting(receiver.url), tmp_path) as bot:
        receiver.statuses = [422]
        complete_signup(bot)
        row = wait_for(lambda: (r := submissions(bot)[0])["post_status"] == "failed" and r)
        assert (row["post_attempts"], row["post_error"]) == (1, "HTTP 422")
        bot.advance("1h")  # no retry is scheduled
        assert len(receiver.requests) == 1


def test_retries_stop_after_post_attempts(tmp_path):
    with Receiver() as receiver, live(posting(receiver.url, post_attempts=3), tmp_path) as bot:
        receiver.statuses = [503] * 10
        complete_signup(bot)
        row = retried_until(bot, lambda row: row["post_status"] == "failed")
        bot.advance("1h")
        assert (row["post_attempts"], row["post_error"], len(receiver.requests)) == (3, "HTTP 503", 3)


def test_an_unreachable_receiver_is_retried_and_the_delivery_survives_a_restart(tmp_path):
    receiver = Receiver()  # not listening yet: connections are refused
    with live(posting(receiver.url, post_backoff="200ms"), tmp_path) as bot:
        complete_signup(bot)
        row = retried_until(bot, lambda row: row["post_attempts"] >= 2)
        assert row["post_status"] == "pending" and "ConnectError" in row["post_error"]
        with receiver:
            bot.restart()
            retried_until(bot, lambda row: row["post_status"] == "delivered")
            assert [body["answers"] for body, _ in receiver.requests] == [{"name": "Ann", "zip": "60601"}]


@pytest.mark.parametrize("engine", ["sqlite"])  # two databases side by side: tmp_path's and tmp_path/live's
def test_sandbox_mode_records_answers_but_posts_nothing(tmp_path):
    with Receiver() as receiver:
        with BotTester(posting(receiver.url), tmp_path=tmp_path) as bot:
            complete_signup(bot)
            assert deliveries(bot) == [] and receiver.requests == []
            assert submissions(bot)[0]["post_status"] == "sandbox"
        # A submission left pending by a live run waits while the bot runs sandboxed.
        with live(posting(receiver.url), tmp_path / "live") as bot:
            receiver.statuses = [503] * 50
            complete_signup(bot)
            wait_for(lambda: receiver.requests)
        receiver.statuses.clear()
        with BotTester(posting(receiver.url), tmp_path=tmp_path / "live") as bot:
            attempts = submissions(bot)[0]["post_attempts"]
            bot.advance("1s")  # its next attempt falls due while sandboxed: it waits (made again later)
            assert (submissions(bot)[0]["post_status"], submissions(bot)[0]["post_attempts"]) == ("pending", attempts)
        with live(posting(receiver.url), tmp_path / "live") as bot:
            retried_until(bot, lambda row: row["post_status"] == "delivered")


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("change, key, rule", [
    ({"steps": []}, "signup.steps", "is required"),
    ({"trigger": None}, "signup.trigger", "is required"),
    ({"steps": [{"ask": "Zip?", "save_as": "zip", "regex": "[0-9"}]}, r"signup.steps\[0\].regex",
     "is not a valid regular expression"),
    ({"steps": [{"ask": "When?", "save_as": "day", "type": "datetime"}]}, r"signup.steps\[0\].type", "must be one of"),
    ({"steps": [{"ask": "Size?", "save_as": "size", "choices": []}]}, r"signup.steps\[0\].choices", "non-empty"),
    ({"steps": [{"ask": "N?", "save_as": "n", "min": 1}]}, r"signup.steps\[0\].min", 'type = "number" only'),
    ({"steps": [{"ask": "Size?", "save_as": "size", "choices": ["S"], "regex": "S"}]}, r"signup.steps\[0\].choices",
     "one validation per step"),
    ({"steps": [{"ask": "Name?", "save_as": "first name"}]}, r"signup.steps\[0\].save_as", "variable name"),
    ({"steps": [{"ask": "Name?"}]}, r"signup.steps\[0\].save_as", "is required"),
    ({"steps": [{"save_as": "name"}]}, r"signup.steps\[0\].ask", "is required"),
    ({"steps": [{"ask": "Hi {name}?", "save_as": "name"}]}, r"signup.steps\[0\].ask", "uses {name}, which no earlier"),
    ({"steps": [{"ask": "Name?", "save_as": "name", "reply": "x"}]}, r"signup.steps\[0\].reply", "unknown setting"),
    ({"done": "Thanks {nmae}!"}, "signup.done", r"uses {nmae}.*available: name, zip"),
    ({"done": "Thanks {name!"}, "signup.done", "lone '{'"),
    ({"expire_after": "an hour"}, "signup.expire_after", "is not a duration"),
    ({"expire_after": "0s"}, "signup.expire_after", "longer than 0s"),
    ({"post_to": "example.com/x"}, "signup.post_to", "http"),
    ({"post_attempts": 0}, "signup.post_attempts", ">= 1"),
    ({"expiry": "x"}, "signup.expiry", "unknown setting"),
])  # fmt: skip
def test_bad_flow_settings_are_config_errors_naming_the_key(tmp_path, change, key, rule):
    flow = {k: v for k, v in {**SIGNUP, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=rf"profiles\.support\.plugin_config\.flows\.{key}: .*{rule}"):
        BotTester(config({"signup": flow}), tmp_path=tmp_path)


def test_a_flow_must_be_a_table(tmp_path):
    with pytest.raises(ConfigError, match=r"plugin_config\.flows\.signup: must be a table"):
        BotTester(config({"signup": "JOIN"}), tmp_path=tmp_path)


@pytest.mark.parametrize("flows, message", [
    ({"signup": {**SIGNUP, "trigger": "stop"}}, "STOP is a reserved opt-out keyword"),
    ({"signup": {**SIGNUP, "exit_word": "Cancel"}}, "CANCEL is a reserved opt-out keyword"),
    ({"signup": SIGNUP, "again": {**SIGNUP, "trigger": "join!"}},
     r"keyword JOIN is claimed twice: by plugin 'flows' \(trigger of flow 'signup'\) and by plugin 'flows' "
     r"\(trigger of flow 'again'\)"),
    ({"signup": {**SIGNUP, "trigger": "EXIT"}}, "keyword EXIT is claimed twice"),
])  # fmt: skip
def test_trigger_and_exit_word_conflicts_are_config_errors(tmp_path, flows, message):
    with pytest.raises(ConfigError, match=message):
        BotTester(config(flows), tmp_path=tmp_path)


def test_flows_may_share_the_default_exit_word(tmp_path):
    with BotTester(config({"signup": SIGNUP, "other": {**SIGNUP, "trigger": "OTHER"}}), tmp_path=tmp_path) as bot:
        assert bot.text("other") == ["What's your name?"]
        assert bot.text("exit") == ["OK, stopped. Text OTHER to start again."]
