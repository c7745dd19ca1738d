"""bot.toml loading: values and defaults, env interpolation, durations, every rule, number resolution."""

from __future__ import annotations

import base64
import dataclasses
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot_core.config import Config, load_config, parse_duration
from bot_core.errors import ConfigError

PROFILE = """
[profiles.support]
secret = "s3cret-profile"
numbers = ["+13125550100"]
"""
PUBLIC_KEY = base64.b64encode(bytes(range(32))).decode()

FULL = f"""
[bot]
database = "data/bot.db"
public_url = "https://bot.example.com/"
plugins_dir = "plugins"
sandbox = true
verify_signatures = false
plugin_timeout = "1.5s"
shutdown_grace = 3
fallback_reply = "Sorry?"
max_parts = 3
log_format = "json"

[telnyx]
api_version = 2
api_base = "https://telnyx.test/v2/"
api_key = "${{TELNYX_API_KEY}}"
public_key = "{PUBLIC_KEY}"
management_base = "https://manage.test/v2/"

[sending]
max_attempts = 3
backoff_initial = "500ms"
backoff_max = "5m"
rate = 2
timeout = "20s"

[profiles.support]
enabled = true
secret = "${{SUPPORT_PROFILE_SECRET}}"
numbers = ["+13125550100", "+1 (312) 555-0101"]
plugins = ["echo", "faq"]
alphanumeric_sender_id = "ACME"
send_rate = 1.0
telnyx_profile_id = "400-abc"
[profiles.support.plugin_config.echo]
prefix = "You said: "
suffix = "!"
[profiles.support.plugin_config.faq]
file = "faq.md"

[profiles.sales]
enabled = false
secret = "s3cret-sales"
numbers = ["+13125550102"]

[numbers."+13125550101"]
profile = "support"
plugins = ["echo"]
send_rate = 0.5
[numbers."+13125550101".plugin_config.echo]
prefix = "Echo: "
[numbers."+13125550101".plugin_config.weather]
city = "Chicago"

[numbers."+1 312 555 0199"]
send_rate = 0
"""
ENV = {"TELNYX_API_KEY": "KEY-very-secret", "SUPPORT_PROFILE_SECRET": "s3cret-support"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bot.toml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ={} if environ is None else environ)


def error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    message = str(info.value)
    assert str(tmp_path / "bot.toml") in message
    return message


# --- values and defaults -----------------------------------------------------------------------


def test_full_file_is_parsed_to_typed_values(tmp_path):
    config = load(tmp_path, FULL, ENV)
    assert config.path == tmp_path / "bot.toml"
    assert config.base_dir == tmp_path
    assert config.bot == config.bot.__class__(
        database=tmp_path / "data" / "bot.db",
        public_url="https://bot.example.com",
        plugins_dir=tmp_path / "plugins",
        sandbox=True,
        verify_signatures=False,
        plugin_timeout=1.5,
        shutdown_grace=3.0,
        fallback_reply="Sorry?",
        max_parts=3,
        log_format="json",
    )
    assert (config.telnyx.api_version, config.telnyx.api_base) == (2, "https://telnyx.test/v2")
    assert config.telnyx.api_key == "KEY-very-secret"
    assert config.telnyx.public_key == PUBLIC_KEY
    assert config.telnyx.management_base == "https://manage.test/v2"
    assert dataclasses.astuple(config.sending) == (3, 0.5, 300.0, 2.0, 20.0)
    support = config.profiles["support"]
    assert support.secret == "s3cret-support"
    assert support.numbers == ("+13125550100", "+13125550101")
    assert support.plugins == ("echo", "faq")
    assert support.plugin_config == {"echo": {"prefix": "You said: ", "suffix": "!"}, "faq": {"file": "faq.md"}}
    assert (support.alphanumeric_sender_id, support.send_rate, support.telnyx_profile_id) == ("ACME", 1.0, "400-abc")
    assert config.profiles["sales"].enabled is False
    assert set(config.numbers) == {"+13125550101", "+13125550199"}
    assert config.numbers["+13125550199"].profile is None


def test_empty_file_gives_defaults(tmp_path):
    config = load(tmp_path, "")
    assert dataclasses.asdict(config.bot) == {
        "database": tmp_path / "bot.db",
        "public_url": None,
        "plugins_dir": None,
        "sandbox": False,
        "verify_signatures": True,
        "plugin_timeout": 10.0,
        "shutdown_grace": 10.0,
        "fallback_reply": "",
        "max_parts": 10,
        "log_format": "text",
        "max_replies": 10,
        "store_timeout": 1.0,
        "lease": 60.0,
        "poll_interval": 1.0,
    }
    assert dataclasses.asdict(config.telnyx) == {
        "api_version": 1,
        "api_base": "https://sms.telnyx.com",
        "api_key": None,
        "public_key": None,
        "management_base": "https://api.telnyx.com/v2",
        "webhook_failover_url": None,
    }
    assert dataclasses.astuple(config.sending) == (8, 1.0, 300.0, 0.0, 10.0)
    assert (config.profiles, config.numbers, config.numbers_state()) == ({}, {}, [])


def test_profile_defaults(tmp_path):
    profile = load(tmp_path, '[profiles.p]\nsecret = "x"').profiles["p"]
    assert (profile.enabled, profile.numbers, profile.plugins, profile.plugin_config) == (True, (), None, {})
    assert (profile.alphanumeric_sender_id, profile.send_rate, profile.telnyx_profile_id) == (None, None, None)


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    config = load(tmp_path, '[bot]\ndatabase = "../other.db"\nplugins_dir = "/abs/plugins"')
    assert config.bot.database == tmp_path / ".." / "other.db"
    assert config.bot.plugins_dir == Path("/abs/plugins")


def test_from_dict_resolves_against_base_dir_and_names_dict_in_errors(tmp_path):
    config = Config.from_dict({"bot": {"database": "x.db"}}, base_dir=tmp_path)
    assert (config.path, config.bot.database) == (None, tmp_path / "x.db")
    with pytest.raises(ConfigError, match=r"^<dict>: bot\.max_parts: must be an integer from 1 to 10"):
        Config.from_dict({"bot": {"max_parts": 0}})
    with pytest.raises(ConfigError, match=r"^custom: unknown key 'nope' at the top level"):
        Config.from_dict({"nope": {}}, source="custom")


# --- environment interpolation -----------------------------------------------------------------


def test_env_variables_are_interpolated_in_every_string(tmp_path):
    text = """
    [bot]
    fallback_reply = "Hi from ${NAME}, ${MISSING:-nobody} and ${EMPTY:-fallback}!"
    public_url = "${PUBLIC_URL:-}"
    [profiles.p]
    secret = "${SECRET}"
    numbers = ["${NUMBER}"]
    [profiles.p.plugin_config.weather]
    token = "${TOKEN}"
    nested = { list = ["${NAME}"] }
    """
    environ = {"NAME": "Ann", "EMPTY": "", "SECRET": "sss", "NUMBER": "+13125550100", "TOKEN": "tok"}
    config = load(tmp_path, text, environ)
    assert config.bot.fallback_reply == "Hi from Ann, nobody and fallback!"
    assert config.bot.public_url is None
    assert config.profiles["p"].numbers == ("+13125550100",)
    assert config.profiles["p"].plugin_config == {"weather": {"token": "tok", "nested": {"list": ["Ann"]}}}


def test_a_set_but_empty_variable_without_default_is_empty(tmp_path):
    assert load(tmp_path, '[bot]\nfallback_reply = "<${EMPTY}>"', {"EMPTY": ""}).bot.fallback_reply == "<>"


def test_unset_variable_is_an_error_naming_variable_and_key(tmp_path):
    message = error(tmp_path, '[profiles.support]\nsecret = "${SUPPORT_PROFILE_SECRET}"')
    assert "profiles.support.secret" in message
    assert "SUPPORT_PROFILE_SECRET is not set" in message


@pytest.mark.parametrize("value", ["${", "${NAME", "${}", "${1ABC}", "${A B}"])
def test_malformed_variable_reference_is_an_error(tmp_path, value):
    assert "bot.fallback_reply: malformed ${...}" in error(tmp_path, f'[bot]\nfallback_reply = "{value}"')


def test_environ_defaults_to_os_environ(tmp_path, monkeypatch):
    monkeypatch.setenv("BOT_CORE_TEST_REPLY", "from env")
    config = load_config(write(tmp_path, '[bot]\nfallback_reply = "${BOT_CORE_TEST_REPLY}"'))
    assert config.bot.fallback_reply == "from env"


# --- durations ---------------------------------------------------------------------------------

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("0s", 0.0),
        (" 5s ", 5.0),
        (0, 0.0),
        (10, 10.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts(value, seconds):
    result = parse_duration(value)
    assert result == pytest.approx(seconds)
    assert type(result) is float


@pytest.mark.parametrize(
    "value",
    [
        "",
        "10",
        "s",
        "-1s",
        "1.s",
        ".5s",
        "1 s",
        "5S",
        "5y",
        "1e3s",
        "1,5s",
        "inf s",
        "١s",
        -1,
        -0.5,
        math.nan,
        math.inf,
        True,
        None,
        [1],
    ],
)
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


@given(st.text(max_size=12) | st.from_regex(r"-?[0-9]{0,4}(\.[0-9]{0,3})?(ms|s|m|h|d|x)?", fullmatch=True))
def test_every_accepted_duration_is_a_non_negative_float(text):
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert type(seconds) is float and math.isfinite(seconds) and seconds >= 0


@given(st.integers(0, 10**9) | st.decimals(0, 10**6, places=3).map(str), st.sampled_from(sorted(UNITS)))
def test_number_and_unit_give_number_times_factor(number, unit):
    assert parse_duration(f"{number}{unit}") == pytest.approx(float(number) * UNITS[unit])


def test_bad_duration_in_config_names_file_and_key(tmp_path):
    message = error(tmp_path, '[sending]\nbackoff_max = "soon"')
    assert "sending.backoff_max: 'soon' is not a duration" in message


# --- every rule is a ConfigError naming file, key and rule -------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[profiles.support]\nsecert = "x"\nsecret = "y"',
            "unknown key 'secert' in [profiles.support] (did you mean 'secret'?)",
        ),
        ("[bot]\ndatabse = 'x'", "unknown key 'databse' in [bot]"),
        ("[sendng]\nrate = 1", "unknown key 'sendng' at the top level"),
        ('[numbers."+13125550100"]\nplugin = ["echo"]', "unknown key 'plugin' in [numbers.\"+13125550100\"]"),
        ("bot = 5", "bot: must be a table, not an integer"),
        ("[profiles]\nsupport = 'x'", "profiles.support: must be a table, not a string"),
        (
            '[profiles.support]\nsecret = "x"\nenabled = "yes"',
            "profiles.support.enabled: must be true or false, not a string",
        ),
        ('[profiles.support]\nsecret = "x"\nnumbers = "+13125550100"', "profiles.support.numbers: must be an array"),
        (
            '[profiles.support]\nsecret = "x"\nnumbers = ["+13125550100", "555"]',
            "profiles.support.numbers[1]: invalid phone number: '555'",
        ),
        ("[profiles.support]\nnumbers = []", "profiles.support.secret: is required"),
        ('[profiles.support]\nsecret = ""', "profiles.support.secret: is required"),
        ("[profiles.support]\nsecret = 5", "profiles.support.secret: must be a string, not an integer"),
        ('[profiles.support]\nsecret = "x"\nplugins = "echo"', "profiles.support.plugins: must be an array"),
        (
            '[profiles.support]\nsecret = "x"\nplugins = ["echo", 1]',
            "profiles.support.plugins: must be an array of plugin",
        ),
        (
            '[profiles.support]\nsecret = "x"\nsend_rate = -1',
            "profiles.support.send_rate: must be a number of messages",
        ),
        ('[profiles.support]\nsecret = "x"\nsend_rate = "fast"', "profiles.support.send_rate: must be a number"),
        (
            '[profiles.support]\nsecret = "x"\nplugin_config = { echo = 5 }',
            "profiles.support.plugin_config.echo: must be a table",
        ),
        ('[profiles."my support"]\nsecret = "x"\nenabled = 1', 'profiles."my support".enabled: must be true or false'),
        ("[bot]\nmax_parts = 11", "bot.max_parts: must be an integer from 1 to 10, not 11"),
        ("[bot]\nmax_parts = 0", "bot.max_parts: must be an integer from 1 to 10"),
        ("[bot]\nmax_parts = true", "bot.max_parts: must be an integer, not a boolean"),
        ("[bot]\nmax_parts = 2.0", "bot.max_parts: must be an integer, not a float"),
        ("[bot]\nlog_format = 'xml'", "bot.log_format: must be 'text' or 'json', not 'xml'"),
        ("[bot]\ndatabase = ''", "bot.database: must be a file name"),
        ("[bot]\npublic_url = 'bot.example.com'", "bot.public_url: must be an http(s) URL"),
        ("[bot]\npublic_url = 'ftp://bot.example.com'", "bot.public_url: must be an http(s) URL"),
        ("[bot]\nplugin_timeout = -1", "bot.plugin_timeout: -1 is not a duration"),
        ("[bot]\nsandbox = 'no'", "bot.sandbox: must be true or false"),
        ("[telnyx]\napi_version = 3", "telnyx.api_version: must be 1 or 2, not 3"),
        ("[telnyx]\napi_version = '2'", "telnyx.api_version: must be an integer, not a string"),
        ("[telnyx]\napi_version = 2", "telnyx.api_key: is required when api_version = 2"),
        ("[telnyx]\npublic_key = 'not base64!'", "telnyx.public_key: must be a base64 Ed25519 public key"),
        (
            f"[telnyx]\npublic_key = '{base64.b64encode(bytes(31)).decode()}'",
            "telnyx.public_key: must be a base64 Ed25519",
        ),
        ("[telnyx]\nmanagement_base = 'api.telnyx.com'", "telnyx.management_base: must be an http(s) URL"),
        ("[sending]\nmax_attempts = 0", "sending.max_attempts: must be an integer >= 1, not 0"),
        ("[sending]\nrate = -0.5", "sending.rate: must be a number of messages per second >= 0"),
        ("[sending]\nrate = inf", "sending.rate: must be a number of messages per second >= 0"),
        ("[sending]\nbackoff_initial = '10m'\nbackoff_max = '1m'", "sending.backoff_max: must be >= backoff_initial"),
        ('[numbers."call me"]', "numbers.\"call me\": invalid phone number: 'call me'"),
        ('[numbers."+13125550100"]\n[numbers."+1 312 555 0100"]', 'numbers."+1 312 555 0100": is the same number'),
        (
            '[numbers."+13125550100"]\nprofile = "nope"',
            "numbers.\"+13125550100\".profile: names unknown profile 'nope'",
        ),
        ('[numbers."+13125550100"]\nsend_rate = -2', 'numbers."+13125550100".send_rate: must be a number'),
        ('[numbers."+13125550100"]\nplugins = [""]', 'numbers."+13125550100".plugins: must be an array of plugin'),
    ],
)
def test_rule_violations_name_file_key_and_rule(tmp_path, text, expected):
    assert expected in error(tmp_path, text)


def test_every_mistake_of_a_file_is_reported_at_once(tmp_path):
    text = """
[bot]
max_parts = 11
plugin_timeout = "ten seconds"
databse = "x.db"

[sending]
rate = -1

[profiles.support]
numbers = ["+13125550100", "call me"]
plugins = "echo"
secret = "${MISSING_SECRET}"

[profiles.sales]
secret = "x"
send_rate = "fast"

[numbers."+13125550199"]
profile = "nope"
"""
    lines = error(tmp_path, text).splitlines()
    path = str(tmp_path / "bot.toml")
    assert all(line.startswith(f"{path}: ") for line in lines)
    expected = [
        "profiles.support.secret: environment variable MISSING_SECRET is not set",
        "bot.max_parts: must be an integer from 1 to 10, not 11",
        "bot.plugin_timeout: 'ten seconds' is not a duration",
        "unknown key 'databse' in [bot] (did you mean 'database'?)",
        "sending.rate: must be a number of messages per second >= 0",
        "profiles.support.numbers[1]: invalid phone number",
        "profiles.support.plugins: must be an array of plugin names",
        "profiles.sales.send_rate: must be a number, not a string",
        "numbers.\"+13125550199\".profile: names unknown profile 'nope'",
    ]
    for rule in expected:
        assert sum(rule in line for line in lines) == 1, (rule, lines)
    assert len(lines) == len(expected)


def test_a_problems_list_collects_the_mistakes_and_keeps_what_could_be_read(tmp_path):
    problems: list[str] = []
    config = Config.from_dict({"bot": {"max_parts": 0, "sandbox": True}, "profiles": {"p": {
        "secret": "s", "numbers": ["+13125550100", "nope"], "plugin_config": {"echo": {"prefix": "> "}}}}},
        source="bot.toml", problems=problems)  # fmt: skip
    assert [p.split(": ")[1] for p in problems] == ["bot.max_parts", "profiles.p.numbers[1]"]
    assert config.bot.max_parts == 10 and config.bot.sandbox is True  # the default stands in
    assert config.profiles["p"].numbers == ("+13125550100",)
    assert config.profiles["p"].plugin_config == {"echo": {"prefix": "> "}}


def test_every_unknown_key_of_a_table_is_reported(tmp_path):
    lines = error(tmp_path, "[bot]\nsandbx = true\nmax_part = 3\n" + PROFILE).splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "unknown key 'sandbx' in [bot] (did you mean 'sandbox'?)",
        "unknown key 'max_part' in [bot] (did you mean 'max_parts'?)",
    ]


def test_malformed_toml_names_file_and_position(tmp_path):
    message = error(tmp_path, "[bot]\nsandbox = \n")
    assert "invalid TOML" in message and "line 2" in message


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_a_number_in_two_profiles_names_both(tmp_path):
    text = PROFILE + '[profiles.sales]\nsecret = "x"\nnumbers = ["+1 312 555 0100"]'
    message = error(tmp_path, text)
    assert "profiles.sales.numbers: +13125550100 is listed by both profile 'support' and profile 'sales'" in message


def test_a_number_assigned_to_another_profile_than_its_lister_names_both(tmp_path):
    text = PROFILE + '[profiles.sales]\nsecret = "x"\n[numbers."+13125550100"]\nprofile = "sales"'
    message = error(tmp_path, text)
    assert "numbers.\"+13125550100\".profile: assigns +13125550100 to profile 'sales'" in message
    assert "profile 'support' lists it" in message


# --- numbers -----------------------------------------------------------------------------------


def test_numbers_are_normalised_to_e164(tmp_path):
    text = '[profiles.p]\nsecret = "x"\nnumbers = ["+1 (312) 555-0100", "+13125550100"]\n[numbers."+13125550101"]'
    config = load(tmp_path, text)
    assert config.profiles["p"].numbers == ("+13125550100",)
    assert list(config.numbers) == ["+13125550101"]
    assert config.number("+1 (312) 555-0100").number == "+13125550100"
    assert config.number("13125550101").number == "+13125550101"
    assert config.number("+13125550199") is None
    assert config.number("not a number") is None


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [
        ("3125550100", "write +13125550100"),
        ("13125550100", "write +13125550100"),
        ("+3125550100", "+ then the country code"),
    ],
)
def test_config_numbers_must_be_valid_e164_and_the_error_says_what_they_would_look_like(tmp_path, text, suggestion):
    # E.164 (ITU-T): "+", country code, national number. "3125550100" used to be read as
    # "+3125550100", a Dutch number phonenumbers calls invalid, and listed as messaging-enabled.
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f'[profiles.p]\nsecret = "x"\nnumbers = ["{text}"]')
    assert "profiles.p.numbers[0]: invalid phone number" in str(caught.value) and "E.164" in str(caught.value)
    assert suggestion in str(caught.value)
    with pytest.raises(ConfigError, match="E.164"):
        load(tmp_path, f'[profiles.p]\nsecret = "x"\n[numbers."{text}"]\nprofile = "p"')


def test_enabled_and_reason_resolution(tmp_path):
    config = load(tmp_path, FULL, ENV)
    states = {state.number: state for state in config.numbers_state()}
    assert list(states) == ["+13125550100", "+13125550101", "+13125550102", "+13125550199"]
    assert (states["+13125550100"].profile, states["+13125550100"].enabled, states["+13125550100"].reason) == (
        "support",
        True,
        None,
    )
    assert (states["+13125550102"].enabled, states["+13125550102"].reason) == (
        False,
        "messaging profile 'sales' is disabled",
    )
    assert (states["+13125550199"].profile, states["+13125550199"].enabled, states["+13125550199"].reason) == (
        None,
        False,
        "not assigned to a messaging profile",
    )
    assert all(state.capable for state in states.values())
    assert config.enabled_numbers() == ["+13125550100", "+13125550101"]


def test_a_numbers_table_can_assign_a_number_to_a_profile(tmp_path):
    config = load(tmp_path, PROFILE + '[numbers."+13125550109"]\nprofile = "support"')
    assert config.profiles["support"].numbers == ("+13125550100", "+13125550109")
    assert config.number("+13125550109").enabled
    assert config.enabled_numbers() == ["+13125550100", "+13125550109"]


def test_per_number_settings_override_the_profile(tmp_path):
    config = load(tmp_path, FULL, ENV)
    plain, overridden = config.number("+13125550100"), config.number("+13125550101")
    assert plain.plugins == ("echo", "faq")
    assert overridden.plugins == ("echo",)
    assert plain.plugin_config == {"echo": {"prefix": "You said: ", "suffix": "!"}, "faq": {"file": "faq.md"}}
    assert overridden.plugin_config == {
        "echo": {"prefix": "Echo: ", "suffix": "!"},
        "faq": {"file": "faq.md"},
        "weather": {"city": "Chicago"},
    }
    assert config.profiles["support"].plugin_config["echo"]["prefix"] == "You said: "  # merging copies
    assert (plain.send_rate, overridden.send_rate) == (1.0, 0.5)
    assert config.send_rate_for("+1 312 555 0101") == 0.5
    assert config.send_rate_for("+13125550199") == 0.0  # its own 0 wins over [sending] rate = 2
    assert config.send_rate_for("+13125550102") == 2.0  # neither number nor profile sets one
    assert config.send_rate_for("+19995550100") == 2.0


def test_plugins_are_none_when_nobody_sets_them(tmp_path):
    state = load(tmp_path, PROFILE).number("+13125550100")
    assert (state.plugins, state.plugin_config, state.send_rate) == (None, {}, None)


def test_profile_for_sender_by_number_or_alphanumeric_sender_id(tmp_path):
    config = load(tmp_path, FULL, ENV)
    assert config.profile_for_sender("+1 312 555 0101").name == "support"
    assert config.profile_for_sender("+13125550102").name == "sales"
    assert config.profile_for_sender("ACME").name == "support"
    assert config.profile_for_sender("acme") is None
    assert config.profile_for_sender("+13125550199") is None  # known, but in no profile
    assert config.profile_for_sender("+19995550100") is None


# --- secrets -----------------------------------------------------------------------------------


def test_secrets_are_absent_from_repr(tmp_path):
    config = load(tmp_path, FULL, ENV)
    for text in (repr(config), str(config.telnyx), repr(config.profiles), repr(config.profiles["sales"])):
        assert "KEY-very-secret" not in text and "s3cret" not in text
    assert "ACME" in repr(config)


@pytest.mark.parametrize(
    "extra",
    [
        '[profiles.support]\nsecret = "${SUPPORT_PROFILE_SECRET}"\nsecert = "typo"',
        '[profiles.support]\nsecret = "${SUPPORT_PROFILE_SECRET}"\nnumbers = ["bad"]',
        '[profiles.support]\nsecret = "${SUPPORT_PROFILE_SECRET}"\nalphanumeric_sender_id = "TOOLONGNAME12"',
        '[telnyx]\napi_version = 2\napi_key = "${TELNYX_API_KEY}"\npublic_key = "nope"',
        '[telnyx]\napi_version = 2\napi_key = "${TELNYX_API_KEY}"\nextra = 1',
    ],
)
def test_secrets_are_absent_from_error_messages(tmp_path, extra):
    message = error(tmp_path, extra, ENV)
    assert "KEY-very-secret" not in message and "s3cret" not in message


# --- Telnyx and sender ids ---------------------------------------------------------------------


@pytest.mark.parametrize(("version", "base"), [(1, "https://sms.telnyx.com"), (2, "https://api.telnyx.com/v2")])
def test_api_base_defaults_per_api_version(tmp_path, version, base):
    config = load(tmp_path, f'[telnyx]\napi_version = {version}\napi_key = "k"')
    assert config.telnyx.api_base == base


def test_api_key_is_optional_in_sandbox_and_empty_public_key_is_unset(tmp_path):
    config = load(tmp_path, '[bot]\nsandbox = true\n[telnyx]\napi_version = 2\npublic_key = "${PK:-}"')
    assert (config.telnyx.api_key, config.telnyx.public_key) == (None, None)


@pytest.mark.parametrize("sender_id", ["ACME", "AB CD 12", "a", "ELEVENCHARS"])
def test_valid_alphanumeric_sender_ids(tmp_path, sender_id):
    config = load(tmp_path, f'[profiles.p]\nsecret = "x"\nalphanumeric_sender_id = "{sender_id}"')
    assert config.profiles["p"].alphanumeric_sender_id == sender_id


@pytest.mark.parametrize(
    ("sender_id", "rule"),
    [
        ('"123"', "at least one letter"),
        ('"TOOLONGNAME12"', "1-11 characters"),
        ('"ACME!"', "1-11 characters"),
        ('""', "1-11 characters"),
        ("7", "must be a string"),
    ],
)
def test_invalid_alphanumeric_sender_ids(tmp_path, sender_id, rule):
    message = error(tmp_path, f'[profiles.p]\nsecret = "x"\nalphanumeric_sender_id = {sender_id}')
    assert "profiles.p.alphanumeric_sender_id" in message and rule in message


def test_config_is_frozen(tmp_path):
    config = load(tmp_path, PROFILE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bot = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.profiles["support"].secret = "other"
