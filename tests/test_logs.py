"""Structured logs: one line per event, JSON on request, message and conversation ids as fields,
secrets masked wherever they hide."""

from __future__ import annotations

import io
import json
import logging
import textwrap

import httpx
import pytest

from bot_core.logs import MASK, JsonFormatter, SecretFilter, TextFormatter, setup_logging
from bot_core.testing import TelnyxWebhooks

SECRET = "s3cr3t-profile-secret"
API_KEY = "KEY-abcdef-0123"


@pytest.fixture
def root_logging():
    """setup_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def record(message: str, *args: object, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    return logging.getLogger("bot_core.test").makeRecord(
        "bot_core.test", logging.WARNING, __file__, 1, message, args,
        (type(exc), exc, exc.__traceback__) if exc else None, extra=extra,
    )  # fmt: skip


def failure(text: str) -> BaseException:
    try:
        raise RuntimeError(text)
    except RuntimeError as exc:
        return exc


def test_secrets_are_masked_in_the_message_its_arguments_the_traceback_and_the_fields():
    mask = SecretFilter([SECRET, API_KEY, ""])
    entry = record("using %s and " + API_KEY, SECRET, exc=failure(f"bad {SECRET}"),
                   mdr_id=7, header=f"x-profile-secret: {SECRET}", request={"auth": f"Bearer {API_KEY}"})  # fmt: skip
    assert mask.filter(entry)
    line = JsonFormatter().format(entry)
    assert SECRET not in line and API_KEY not in line
    fields = json.loads(line)
    assert fields["message"] == f"using {MASK} and {MASK}"
    assert f"RuntimeError: bad {MASK}" in fields["traceback"]
    assert fields["header"] == f"x-profile-secret: {MASK}" and fields["request"] == {"auth": f"Bearer {MASK}"}
    assert fields["mdr_id"] == 7


def test_json_is_one_line_per_event_with_the_extra_fields():
    entry = record("message %s\nreceived", "m-1", exc=failure("with\nlines"), message_id="m-1", conversation_id=3)
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    fields = json.loads(line)
    assert {k: fields[k] for k in ("level", "logger", "message", "message_id", "conversation_id")} == {
        "level": "warning", "logger": "bot_core.test", "message": "message m-1\nreceived", "message_id": "m-1",
        "conversation_id": 3}  # fmt: skip
    assert fields["time"].endswith("+00:00")


def test_text_lines_carry_the_fields_on_the_event_line():
    line = TextFormatter().format(record("sent %d", 5, mdr_id=5, telnyx_id="abc"))
    assert line.endswith('WARNING bot_core.test: sent 5 mdr_id=5 telnyx_id="abc"')


def test_setup_logging_picks_the_format_and_masks(root_logging):
    stream = io.StringIO()
    setup_logging("json", secrets=[SECRET])
    logging.getLogger().handlers[0].setStream(stream)
    logging.getLogger("bot_core.x").info("secret is %s", SECRET, extra={"mdr_id": 1})
    logging.getLogger("bot_core.x").debug("not at info level")
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["message"] == f"secret is {MASK}" and json.loads(line)["mdr_id"] == 1


def test_a_real_server_logs_json_events_with_ids_and_never_a_secret(tmp_path, server_factory):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "leaky.py").write_text(textwrap.dedent(f"""
        import logging
        from bot_core import hookimpl

        @hookimpl
        def handle_message(message):
            logging.getLogger("leaky").warning("the secret is {SECRET}", extra={{"key": "{API_KEY}"}})
            if message.text == "boom":
                raise RuntimeError("failing with {SECRET} in the traceback")
            return "ok"
    """))
    server = server_factory(textwrap.dedent(f"""
        [bot]
        database = "bot.db"
        plugins_dir = "plugins"
        sandbox = true
        log_format = "json"

        [telnyx]
        api_key = "{API_KEY}"

        [profiles.support]
        secret = "{SECRET}"
        numbers = ["+13125550100"]
        plugins = ["leaky"]
    """))
    server.start()
    webhooks = TelnyxWebhooks(secrets={"+13125550100": SECRET})
    for text, id in (("hi", "msg-1"), ("boom", "msg-2")):
        webhook = webhooks.message(text, from_="+13125550123", to="+13125550100", id=id)
        assert server.post(webhook.body, webhook.headers).status_code == 200
    forged = server.post(b'{"from": "+13125550123", "to": "+13125550100", "body": "x"}',
                         {"X-Telnyx-Signature": f"t=1,h={SECRET}"})  # fmt: skip
    assert forged.status_code == 401
    metrics = httpx.get(server.url + "/metrics").text
    assert 'bot_core_webhooks_total{kind="message",outcome="200"} 2.0' in metrics.splitlines()
    assert server.stop() in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    log = server.log
    assert SECRET not in log and API_KEY not in log
    events = [json.loads(line) for line in log.splitlines()]  # every line is one JSON event
    # "received" is a DEBUG line (the webhook's hot path); the "handled" line carries the ids.
    assert not [e for e in events if e["message"].startswith("message msg-1 received")]
    handled = [e for e in events if e.get("mdr_id") == 1 and e.get("message_id") == "msg-1"
               and "conversation_id" in e and e.get("plugin") == "leaky"]
    assert handled, events
    failed = [e for e in events if e["level"] == "error" and e.get("plugin") == "leaky"]
    assert failed and MASK in failed[0]["traceback"]
    leaked = [e for e in events if e["logger"] == "leaky"]
    assert leaked[0]["message"] == f"the secret is {MASK}" and leaked[0]["key"] == MASK


@pytest.mark.parametrize("secret", ["back\\slash-secret", "it's-a-secret", 'quo"ted-secret', "ünïcode-secret"])
def test_secrets_are_masked_in_their_json_and_repr_escaped_forms(secret):
    # A secret with \ or ' in it is spelled differently inside a JSON document or a Python repr
    # (and in the repr of a JSON document): each spelling must be masked, not only the raw one.
    mask = SecretFilter([secret])
    for form in (secret, json.dumps(secret), json.dumps(secret, ensure_ascii=False), repr(secret),
                 repr(json.dumps(secret)), json.dumps(repr(secret))):  # fmt: skip
        masked = mask.mask(f"failed with {form}!")
        assert secret not in masked and form not in masked and MASK in masked, form
    entry = record("x", exc=failure(repr({"key": secret})), fields={"nested": [secret]})
    mask.filter(entry)
    assert secret not in entry.exc_text and repr(secret)[1:-1] not in entry.exc_text
    assert entry.fields == {"nested": [MASK]}
