"""`bot-core telnyx sync` against the fake Telnyx management API, served on loopback.

The paths are checked against Telnyx's OpenAPI spec (team-telnyx/openapi, openapi/spec3.yml):
GET/PATCH /messaging_profiles/{id}, GET /phone_numbers?filter[phone_number]=..., and GET/PATCH
/phone_numbers/{id}/messaging with messaging_profile_id in the body.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from bot_core.cli import cli
from bot_core.config import load_config
from bot_core.management import Management, ManagementError
from bot_core.testing import FakeTelnyx

from .conftest import free_port

KEY = "KEY0123456789abcdef"
SECRET = "support-secret"
HOOK = "https://bot.example.com/webhooks/telnyx"


@pytest.fixture
def telnyx() -> Iterator[FakeTelnyx]:
    with FakeTelnyx(api_key=KEY) as fake:
        fake.add_profile("prof-1", webhook_url="https://old.example.com/hook", webhook_api_version="2",
                         webhook_failover_url="https://standby.example.com/hook", v1_secret=SECRET)  # fmt: skip
        fake.add_number("+13125550100", None)
        fake.add_number("+13125550101", "some-other-profile")
        yield fake


def write_config(tmp_path: Path, fake: FakeTelnyx, *, key: str = KEY, telnyx: str = "",
                 public_url: str = "https://bot.example.com", profile_id: str = "prof-1") -> Path:  # fmt: skip
    path = tmp_path / "bot.toml"
    path.write_text(textwrap.dedent(f"""
        [bot]
        public_url = "{public_url}"

        [telnyx]
        api_key = "{key}"
        management_base = "{fake.url}/v2"
        {telnyx}

        [profiles.support]
        secret = "{SECRET}"
        numbers = ["+13125550100", "+13125550101"]
        telnyx_profile_id = "{profile_id}"

        [profiles.local]
        secret = "local-secret"
        numbers = ["+13125550102"]
    """))
    return path


def sync(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["telnyx", "sync", "--config", str(config), *args], catch_exceptions=False)
    return result.exit_code, result.output


def patches(fake: FakeTelnyx) -> list[tuple[str, dict]]:
    return [(r.path, r.json) for r in fake.requests if r.method == "PATCH"]


def messaging_path(fake: FakeTelnyx, number: str) -> str:
    return f"/v2/phone_numbers/{fake.phone_numbers[number]['id']}/messaging"


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path, telnyx):
    code, out = sync(write_config(tmp_path, telnyx), "--dry-run")
    assert code == 0, out
    assert out.splitlines() == [
        f"Telnyx account at {telnyx.url}/v2:",
        "  change profile support:",
        f'    webhook_url: "https://old.example.com/hook" -> "{HOOK}"',
        '    webhook_api_version: "2" -> "1"',
        "  change number +13125550100:",
        '    messaging_profile_id: null -> "prof-1"',
        "  change number +13125550101:",
        '    messaging_profile_id: "some-other-profile" -> "prof-1"',
        "  skip   profile local: no telnyx_profile_id in the config",
        "dry run: 3 change(s) not made",
    ]
    assert patches(telnyx) == []
    assert {r.headers["authorization"] for r in telnyx.requests} == {f"Bearer {KEY}"}


def test_sync_changes_only_what_differs_and_a_second_run_changes_nothing(tmp_path, telnyx):
    config = write_config(tmp_path, telnyx)
    code, out = sync(config)
    assert code == 0 and out.endswith("made 3 change(s)\n")
    assert patches(telnyx) == [
        ("/v2/messaging_profiles/prof-1", {"webhook_url": HOOK, "webhook_api_version": "1"}),
        (messaging_path(telnyx, "+13125550100"), {"messaging_profile_id": "prof-1"}),
        (messaging_path(telnyx, "+13125550101"), {"messaging_profile_id": "prof-1"}),
    ]
    # Only the spec's paths: nothing under /messaging_phone_numbers, dropped from it in 2020.
    assert {r.path.rsplit("/", 1)[0] if r.path.endswith("/messaging") else r.path for r in telnyx.requests} == {
        "/v2/messaging_profiles/prof-1", "/v2/phone_numbers", *(messaging_path(telnyx, n).rsplit("/", 1)[0]
                                                               for n in ("+13125550100", "+13125550101"))}
    assert telnyx.profiles["prof-1"]["webhook_failover_url"] == "https://standby.example.com/hook"  # not ours to clear
    telnyx.clear()
    code, out = sync(config)
    assert code == 0 and "nothing to change" in out and "ok     profile support" in out
    assert patches(telnyx) == []


def test_a_public_key_asks_for_v2_webhooks_and_the_failover_url_is_set_when_configured(tmp_path, telnyx):
    public_key = telnyx.webhooks.public_key
    config = write_config(tmp_path, telnyx, telnyx=f'public_key = "{public_key}"\n'
                          'webhook_failover_url = "https://standby2.example.com/webhooks/telnyx"')  # fmt: skip
    code, out = sync(config, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["applied"] is True
    assert result["changes"][0] == {"what": "profile support", "path": "/messaging_profiles/prof-1", "fields": {
        "webhook_url": {"from": "https://old.example.com/hook", "to": HOOK},
        "webhook_failover_url": {"from": "https://standby.example.com/hook",
                                 "to": "https://standby2.example.com/webhooks/telnyx"}}}  # fmt: skip
    assert telnyx.profiles["prof-1"]["webhook_api_version"] == "2"


@pytest.mark.parametrize(("setup", "words"), [
    (lambda tmp, fake: write_config(tmp, fake, key="wrong-key"),
     "Telnyx refused GET /messaging_profiles/prof-1: 401 Unauthorized: Authentication failed: the API key is "
     "missing or invalid (code 10009); check [telnyx] api_key"),
    (lambda tmp, fake: write_config(tmp, fake, profile_id="nope"),
     "Telnyx refused GET /messaging_profiles/nope: 404 Not Found: Resource not found: no messaging profile nope "
     "in this account (code 10005); profiles.support.telnyx_profile_id is not the id of a messaging profile"),
    (lambda tmp, fake: fake.phone_numbers.pop("+13125550101") and write_config(tmp, fake),
     "+13125550101 (profiles.support.numbers) is not a phone number of this Telnyx account: "
     "GET /phone_numbers?filter[phone_number]=13125550101 found no such number"),
    (lambda tmp, fake: write_config(tmp, fake, key=""), "[telnyx] api_key is not set"),
    (lambda tmp, fake: write_config(tmp, fake, public_url=""), "[bot] public_url is not set"),
])  # fmt: skip
def test_telnyx_errors_are_shown_in_plain_words_and_nothing_changes(tmp_path, telnyx, setup, words):
    code, out = sync(setup(tmp_path, telnyx))
    assert code == 1 and words in out
    assert "wrong-key" not in out and KEY not in out
    assert patches(telnyx) == []


def test_a_failing_number_read_says_what_telnyx_answered_and_does_not_blame_the_profile_id(tmp_path, telnyx):
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/messaging"):  # Telnyx lists the number but cannot read its settings
            return httpx.Response(404, json={"errors": [{"code": "10005", "title": "Resource not found",
                                                         "detail": "Resource not found"}]})  # fmt: skip
        if request.url.path.endswith("/phone_numbers"):
            return httpx.Response(200, json={"data": [{"id": "1293384261075731499", "phone_number": "+13125550100"}]})
        return httpx.Response(200, json={"data": {"id": "prof-1", "webhook_url": HOOK, "webhook_api_version": "1"}})

    config = load_config(write_config(tmp_path, telnyx))
    with Management(config, transport=httpx.MockTransport(answer)) as management:
        with pytest.raises(ManagementError) as caught:
            management.plan()
    assert str(caught.value) == ("Telnyx refused GET /phone_numbers/1293384261075731499/messaging: 404 Not Found: "
                                 "Resource not found (code 10005); Telnyx has no messaging settings for +13125550100")


def test_an_unreachable_api_is_said_so(tmp_path, telnyx):
    config = write_config(tmp_path, telnyx)
    config.write_text(config.read_text().replace(telnyx.url, f"http://127.0.0.1:{free_port()}"))
    code, out = sync(config)
    assert code == 1 and "cannot reach Telnyx at http://127.0.0.1:" in out


def test_a_secret_that_is_not_telnyxs_is_warned_about_without_showing_either(tmp_path, telnyx):
    telnyx.profiles["prof-1"]["v1_secret"] = "the-real-secret"
    code, out = sync(write_config(tmp_path, telnyx), "--dry-run")
    assert code == 1
    assert "warning: profile support: its secret in the config is not Telnyx's v1_secret" in out
    assert "the-real-secret" not in out and SECRET not in out


def test_apply_stops_at_a_refusal_and_says_why(tmp_path, telnyx):
    with Management(load_config(write_config(tmp_path, telnyx))) as management:
        plan = management.plan()
        del telnyx.profiles["prof-1"]  # someone deletes the profile between the plan and the change
        with pytest.raises(ManagementError, match="404 Not Found: Resource not found: no messaging profile prof-1"):
            management.apply(plan)
    assert telnyx.phone_numbers["+13125550100"]["messaging_profile_id"] is None
