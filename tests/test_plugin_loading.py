"""Plugins come from plugins_dir, installed entry points and bot-core's own bundle, alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bot_core import ConfigError, load_config
from bot_core.plugins import load_plugins

from .conftest import free_port, healthy, wait_for
from .inprocess import bot_core

SIMPLEST = """
from bot_core import hookimpl

@hookimpl
def handle_message(message, conversation):
    n = conversation.state.get("n", 0) + 1
    conversation.state["n"] = n
    return f"echo {message.text} #{n}"
"""


def write_config(tmp_path: Path, plugins: str, extra: str = "") -> Path:
    path = tmp_path / "bot.toml"
    path.write_text(f"""
[bot]
sandbox = true
plugins_dir = "plugins"
{extra}
[profiles.main]
secret = "s"
numbers = ["+13125550100"]
plugins = {plugins}
""")
    (tmp_path / "plugins").mkdir(exist_ok=True)
    return path


def fake_distribution(site: Path, dist: str, entry: str, module: str, code: str) -> None:
    """An installed package as importlib.metadata sees it: a module plus a dist-info folder."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(code)
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[bot_core]\n{entry} = {module}\n")


def test_a_plugins_dir_module_is_a_plugin_named_by_its_file(tmp_path):
    path = write_config(tmp_path, '["counter"]')
    (tmp_path / "plugins" / "counter.py").write_text(SIMPLEST)
    (tmp_path / "plugins" / "_helper.py").write_text("raise RuntimeError('not a plugin')\n")
    plugins = load_plugins(load_config(path))
    assert plugins.sources["counter"] == f"plugins_dir {tmp_path / 'plugins' / 'counter.py'}"
    assert plugins.sources["echo"] == "bundled"
    assert "handle_message" in plugins.hooks_of("counter")


def test_an_installed_entry_point_plugin_is_loaded(tmp_path):
    site = tmp_path / "site"
    fake_distribution(site, "acme-bot-plugin", "acme", "acme_plugin", SIMPLEST)
    path = write_config(tmp_path, '["acme"]')
    out = subprocess.run(
        [sys.executable, "-m", "bot_core", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert out.returncode == 0, out.stderr
    assert "acme" in out.stdout and "+13125550100" in out.stdout


def test_an_unknown_plugin_name_is_a_config_error_and_serve_refuses_to_start(tmp_path):
    path = write_config(tmp_path, '["echo", "nope"]')
    with pytest.raises(ConfigError, match=r"profiles\.main\.plugins: unknown plugin 'nope'"):
        load_plugins(load_config(path))
    serve = subprocess.run([sys.executable, "-m", "bot_core", "serve", "--port", str(free_port()), "--config",
                            str(path)], capture_output=True, text=True, timeout=30)  # fmt: skip
    for out in (bot_core("check", "--config", str(path)), serve):
        assert out.returncode != 0
        assert "unknown plugin 'nope'" in out.stderr and str(path) in out.stderr


def test_a_hook_name_typo_is_refused(tmp_path):
    path = write_config(tmp_path, '["typo"]')
    (tmp_path / "plugins" / "typo.py").write_text(
        "from bot_core import hookimpl\n\n@hookimpl\ndef handle_mesage(message):\n    return 'x'\n"
    )
    with pytest.raises(ConfigError, match="handle_mesage"):
        load_plugins(load_config(path))


def test_serve_without_config_runs_the_sandboxed_demo_bot(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bot_core", "serve", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(url), timeout=20)
        # The README's curl command, as httpx.
        response = httpx.post(
            url + "/webhooks/telnyx",
            json={"sms_id": "demo-1", "from": "+13125550123", "to": "+13125550100", "body": "hello"},
        )
        assert response.status_code == 200, response.text
        rows = wait_for(lambda: _outbound(tmp_path))
        assert rows == ["You said: hello #1"]
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert "SIGNATURES ARE NOT VERIFIED" in output
    assert "SANDBOX" in output


def _outbound(cwd: Path) -> list[str]:
    out = bot_core("messages", "--json", cwd=str(cwd))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    return [r["text"] for r in rows if r["direction"] == "outbound" and r["status"] == "sandbox"]


def test_check_explains_why_a_number_is_not_messaging_enabled(tmp_path):
    path = tmp_path / "bot.toml"
    path.write_text("""
[profiles.live]
secret = "s1"
numbers = ["+13125550100"]
[profiles.paused]
enabled = false
secret = "s2"
numbers = ["+13125550101"]
[numbers."+13125550102"]
plugins = ["echo"]
""")
    out = bot_core("check", "--config", str(path))
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  +")}
    assert "messaging-enabled" in lines["+13125550100"]
    assert "messaging profile 'paused' is disabled" in lines["+13125550101"]
    assert "not assigned to a messaging profile" in lines["+13125550102"]
    assert "s1" not in out.stdout + out.stderr and "s2" not in out.stdout.replace("+1312555", "")


def test_check_fails_on_a_broken_file(tmp_path):
    path = tmp_path / "bot.toml"
    path.write_text('[profiles.main]\nsecret = "s"\nnumbers = ["+13125550100"]\nalphanumeric_sender_id = "123"\n')
    out = bot_core("check", "--config", str(path))
    assert out.returncode == 1
    assert "alphanumeric_sender_id" in out.stderr and "letter" in out.stderr and "bot.toml" in out.stderr


def check(path: Path) -> subprocess.CompletedProcess:
    return bot_core("check", "--config", str(path))


def test_settings_of_plugins_a_profile_does_not_use_are_checked_too(tmp_path):
    # The support line answers with optout and fallback only; the echo and autoresponder tables
    # wait for the day they are switched on, and their typos must not wait with them.
    path = write_config(
        tmp_path,
        '["fallback"]',
        extra="""
[profiles.main.plugin_config.echo]
prefx = "You said: "
[profiles.main.plugin_config.autoresponder]
timezone = "America/Chicgo"
window = "12 hours"
[profiles.main.plugin_config.autoresponse]
enabled = false
""",
    )
    with pytest.raises(ConfigError) as info:
        load_plugins(load_config(path))
    lines = str(info.value).splitlines()
    key = f"{path}: profiles.main.plugin_config"
    assert any(line.startswith(f"{key}.echo.prefx: unknown setting") for line in lines), lines
    assert any(line.startswith(f"{key}.autoresponder.timezone: unknown time zone 'America/Chicgo'") for line in lines)
    assert any(line.startswith(f"{key}.autoresponder.window: '12 hours' is not a duration") for line in lines)
    assert any(line.startswith(f"{key}: unknown plugin 'autoresponse'") and "did you mean 'autoresponder'" in line
               for line in lines), lines  # fmt: skip
    assert len(lines) == 4, lines
    out = check(path)
    assert out.returncode == 1 and out.stderr.count(str(path)) == 4, out.stderr


def test_a_disabled_plugin_s_settings_are_checked(tmp_path):
    path = write_config(
        tmp_path,
        '["echo"]',
        extra="""
[profiles.main.plugin_config.echo]
enabled = false
prefix = 3
""",
    )
    with pytest.raises(ConfigError, match=r"profiles\.main\.plugin_config\.echo\.prefix: must be a string"):
        load_plugins(load_config(path))


def test_without_a_plugins_list_only_optout_answers_and_check_says_so(tmp_path):
    path = tmp_path / "bot.toml"
    path.write_text('[bot]\nsandbox = true\n[profiles.support]\nsecret = "s"\nnumbers = ["+13125550100"]\n'
                    '[profiles.demo]\nsecret = "t"\nnumbers = ["+13125550101"]\nplugins = ["echo"]\n')  # fmt: skip
    out = check(path)
    assert out.returncode == 0, out.stderr
    assert (
        "profile support: plugins answering: optout (no `plugins` list: only opt-out compliance answers" in out.stdout
    )
    assert "profile demo: plugins answering: optout, echo\n" in out.stdout
    assert "+13125550100  profile support  messaging-enabled  plugins: optout\n" in out.stdout


def test_the_startup_log_says_which_plugins_answer_on_each_profile(tmp_path, caplog):
    from bot_core.testing import BotTester

    config = {
        "profiles": {
            "support": {"secret": "s", "numbers": ["+13125550100"]},
            "demo": {"secret": "t", "numbers": ["+13125550101"], "plugins": ["fallback", "echo"]},
        }
    }
    with caplog.at_level("INFO", logger="bot_core"), BotTester(config, tmp_path=tmp_path):
        pass
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("profile support: plugins answering: optout (no `plugins` list") for m in messages)
    assert "profile demo: plugins answering: optout, echo, fallback" in messages


@pytest.mark.parametrize("marker, kind", [("wrapper=True", "wrapper=True"), ("hookwrapper=True", "hookwrapper=True")])
def test_pluggy_wrappers_are_refused_when_the_plugin_loads(tmp_path, marker, kind):
    path = write_config(tmp_path, '["wrapping"]')
    (tmp_path / "plugins" / "wrapping.py").write_text(f"""
from bot_core import hookimpl

@hookimpl
def startup(bot):
    pass

@hookimpl({marker})
def handle_message(message):
    return (yield)
""")
    with pytest.raises(ConfigError) as info:
        load_plugins(load_config(path))
    message = str(info.value)
    assert "plugin 'wrapping'" in message and "hook 'handle_message'" in message and kind in message
    out = check(path)
    assert out.returncode == 1 and "plugin 'wrapping'" in out.stderr and "handle_message" in out.stderr


def test_no_hook_is_historic_so_no_historic_call_reaches_a_plugin():
    from bot_core import hookspecs

    manager = load_plugins(installed=False).manager
    names = [name for name in dir(hookspecs) if hasattr(getattr(manager.hook, name, None), "spec")]
    assert names and not [n for n in names if getattr(manager.hook, n).spec.opts.get("historic")]


def test_a_profile_s_mistake_is_told_once_and_a_number_s_own_under_its_key(tmp_path):
    path = write_config(
        tmp_path,
        '["echo"]',
        extra="""
[profiles.main.plugin_config.echo]
prefx = "> "
[numbers."+13125550100".plugin_config.fallback]
txt = "Sorry?"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_plugins(load_config(path))
    lines = str(info.value).splitlines()
    assert [line.split(": ", 2)[1] for line in lines] == [
        "profiles.main.plugin_config.echo.prefx",
        'numbers."+13125550100".plugin_config.fallback.txt',
    ]


def test_check_tells_the_file_s_mistakes_and_the_plugins_settings_in_one_run(tmp_path):
    path = write_config(
        tmp_path,
        '["fallback"]',
        extra="""
[profiles.main.plugin_config.echo]
prefx = "> "
""",
    )
    path.write_text(path.read_text().replace("sandbox = true", "sandbox = true\nmax_parts = 0"))
    out = check(path)
    assert out.returncode == 1
    assert "2 problems:" in out.stderr
    assert f"{path}: bot.max_parts: must be an integer from 1 to 10, not 0" in out.stderr
    assert f"{path}: profiles.main.plugin_config.echo.prefx: unknown setting" in out.stderr


def test_the_test_harness_refuses_a_wrapper_too(tmp_path):
    import types

    from bot_core import hookimpl
    from bot_core.testing import BotTester

    def handle_message(message):
        return (yield)

    audit = types.ModuleType("audit")
    audit.handle_message = hookimpl(hookwrapper=True)(handle_message)
    config = {"profiles": {"p": {"secret": "s", "numbers": ["+13125550100"], "plugins": ["audit"]}}}
    with pytest.raises(ConfigError, match=r"plugin 'audit': hook 'handle_message' is implemented with "
                                          r"@hookimpl\(hookwrapper=True\)"):  # fmt: skip
        BotTester(config, tmp_path=tmp_path, plugins=[audit])
