"""Keywords: SMS-style matching, and the load-time checks of plugins' keywords and settings."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot_core import Config, ConfigError, hookimpl, match_keyword, normalize_keyword
from bot_core.plugins import load_plugins
from bot_core.testing import BotTester

from .inprocess import bot_core

NUMBER = "+13125550100"


@pytest.mark.parametrize("text, expected", [
    ("stop", "STOP"), ("  Stop!! ", "STOP"), ("'STOP'", "STOP"), ("stop.", "STOP"), ("STOP 🛑", "STOP"),
    ("ＳＴＯＰ", "STOP"), ("stop   texting  me", "STOP TEXTING ME"), ("opt-out", "OPT-OUT"), ("?!", ""),
    ("straße", "STRASSE"),
])  # fmt: skip
def test_normalize_keyword_ignores_case_spacing_and_surrounding_punctuation(text, expected):
    assert normalize_keyword(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("join", "JOIN"), ("JOIN!", "JOIN"), ("  Join please", "JOIN"), ("join, now", "JOIN"), ("rejoined", None),
    ("JOINED", None), ("I want to join", None), ("", None), ("sign up today", "Sign Up"), ("sign here", "sign"),
    ("signup", None),
])  # fmt: skip
def test_match_keyword_takes_the_whole_message_or_its_first_words(text, expected):
    assert match_keyword(text, ["JOIN", "sign", "Sign Up"]) == expected


def test_match_keyword_returns_the_keyword_as_given():
    keywords = {"Hours": "9-5", "address": "1 Main St"}
    assert match_keyword("HOURS?", keywords) == "Hours"
    assert match_keyword("what are your hours", keywords) is None


@given(st.text())
def test_normalizing_twice_changes_nothing(text):
    once = normalize_keyword(text)
    assert normalize_keyword(once) == once
    if once:
        assert match_keyword(text, [once]) == once


# -- keyword claims and plugin settings, checked when the config loads -----------------------


def claiming(name, words, **hooks):
    module = types.ModuleType(name)

    def register_keywords(profile, config):
        return [(word, f"{name} word") for word in words] + [(w, f"{name} {profile}") for w in config.get("more", [])]

    module.register_keywords = hookimpl(register_keywords)
    module.handle_message = hookimpl(lambda message: None)
    for hook, function in hooks.items():
        setattr(module, hook, hookimpl(function))
    return module


def config_dict(plugins=None, plugin_config=None, **extra):
    profile = {"secret": "s", "numbers": [NUMBER], "plugin_config": plugin_config or {}}
    if plugins is not None:
        profile["plugins"] = plugins
    return {"profiles": {"main": profile}, **extra}


def test_two_plugins_claiming_one_keyword_is_a_config_error_naming_both(tmp_path):
    with pytest.raises(ConfigError) as error:
        BotTester(config_dict(["alpha", "beta"]), tmp_path=tmp_path,
                  plugins=[claiming("alpha", ["JOIN"]), claiming("beta", ["join!"])])  # fmt: skip
    message = str(error.value)
    assert "profiles.main" in message and "JOIN" in message
    assert "plugin 'alpha' (alpha word)" in message and "plugin 'beta' (beta word)" in message


def test_only_active_plugins_claims_are_compared(tmp_path):
    plugins = [claiming("alpha", ["JOIN"]), claiming("beta", ["JOIN"])]
    with BotTester(config_dict(["alpha"]), tmp_path=tmp_path, plugins=plugins) as bot:
        assert bot.text("join") == []
    disabled = config_dict(["alpha", "beta"], {"beta": {"enabled": False}})
    with BotTester(disabled, tmp_path=tmp_path / "2", plugins=plugins):
        pass


def test_a_plugin_may_repeat_its_own_claim_but_not_claim_one_word_for_two_things(tmp_path):
    with BotTester(config_dict(["alpha"]), tmp_path=tmp_path, plugins=[claiming("alpha", ["GO", "go"])]):
        pass
    with pytest.raises(ConfigError, match=r"keyword GO is claimed twice.*\(alpha word\).*\(alpha main\)"):
        BotTester(config_dict(["alpha"], {"alpha": {"more": ["GO"]}}), tmp_path=tmp_path / "2",
                  plugins=[claiming("alpha", ["GO"])])  # fmt: skip


def test_opt_out_words_are_reserved(tmp_path):
    with pytest.raises(ConfigError) as error:
        BotTester(config_dict(["alpha"]), tmp_path=tmp_path, plugins=[claiming("alpha", ["Help"])])
    assert "HELP is a reserved opt-out keyword" in str(error.value)
    assert "plugin 'alpha' (alpha word) cannot claim it" in str(error.value)
    # With optout turned off on the profile, the word is free.
    with BotTester(config_dict(["alpha"], {"optout": {"enabled": False}}), tmp_path=tmp_path / "2",
                   plugins=[claiming("alpha", ["HELP"])]):  # fmt: skip
        pass


def test_a_number_with_its_own_settings_is_checked_too(tmp_path):
    config = config_dict(["alpha"], numbers={NUMBER: {"plugin_config": {"alpha": {"more": ["STOP"]}}}})
    with pytest.raises(ConfigError, match=r'numbers\."\+13125550100": STOP is a reserved opt-out keyword'):
        BotTester(config, tmp_path=tmp_path, plugins=[claiming("alpha", [])])


def test_register_keywords_must_return_pairs(tmp_path):
    broken = claiming("alpha", [], register_keywords=lambda: {"JOIN": "x"})
    with pytest.raises(ConfigError, match=r"register_keywords must return \[\(KEYWORD, claimant\)"):
        BotTester(config_dict(["alpha"]), tmp_path=tmp_path, plugins=[broken])


def test_check_config_problems_name_the_file_profile_plugin_and_key(tmp_path):
    def check_config(profile, config):
        return {f"rules[{i}]": "must be a word" for i, rule in enumerate(config.get("rules", [])) if " " in rule}

    checked = claiming("checked", [], check_config=check_config)
    path = tmp_path / "bot.toml"
    path.write_text(f'[profiles.main]\nsecret = "s"\nnumbers = ["{NUMBER}"]\n'
                    '[profiles.main.plugin_config.checked]\nrules = ["ok", "not ok", "also bad"]\n')  # fmt: skip
    with pytest.raises(ConfigError) as error:
        BotTester(path, tmp_path=tmp_path, plugins=[checked])
    assert str(error.value).splitlines() == [
        f"{path}: profiles.main.plugin_config.checked.rules[1]: must be a word",
        f"{path}: profiles.main.plugin_config.checked.rules[2]: must be a word",
    ]


def test_an_async_or_failing_config_hook_is_reported(tmp_path):
    async def check_config():
        return {}

    with pytest.raises(ConfigError, match="check_config must be a plain def"):
        BotTester(config_dict(["alpha"]), tmp_path=tmp_path, plugins=[claiming("alpha", [], check_config=check_config)])
    with pytest.raises(ConfigError, match="plugin 'alpha' failed in check_config: KeyError"):
        BotTester(config_dict(["alpha"]), tmp_path=tmp_path,
                  plugins=[claiming("alpha", [], check_config=lambda config: config["missing"])])  # fmt: skip


def test_settings_for_a_plugin_that_is_not_loaded_are_refused_with_a_hint(tmp_path):
    config = Config.from_dict(config_dict(["echo"], {"autoresponer": {"window": "1h"}}))
    with pytest.raises(
        ConfigError, match=r"plugin_config: unknown plugin 'autoresponer'.*did you mean 'autoresponder'"
    ):
        load_plugins(config, installed=False)


def test_check_and_serve_refuse_a_keyword_conflict(tmp_path):
    path = tmp_path / "bot.toml"
    path.write_text(f'''
[bot]
sandbox = true
[profiles.support]
secret = "s"
numbers = ["{NUMBER}"]
plugins = ["flows", "autoresponder"]
[profiles.support.plugin_config.autoresponder]
keywords = {{ JOIN = "Text JOIN to sign up" }}
[profiles.support.plugin_config.flows.signup]
trigger = "join"
steps = [{{ ask = "Name?", save_as = "name" }}]
''')
    serve = subprocess.run([sys.executable, "-m", "bot_core", "serve", "--port", "0", "--config", str(path)],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    for out in (bot_core("check", "--config", str(path)), serve):
        assert out.returncode != 0, out
        assert "keyword JOIN is claimed twice" in out.stderr
        assert "plugin 'flows' (trigger of flow 'signup')" in out.stderr
        assert "plugin 'autoresponder' (keywords.JOIN)" in out.stderr
