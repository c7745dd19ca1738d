"""``bot-core init``: the bot and the plugin package it writes pass ``check`` and their own tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot_core.cli import cli

from .conftest import bytecode_cached


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def run(args: list[str], cwd: Path, pythonpath: list[Path] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "BOT_CORE_"))}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=bytecode_cached(env), capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_a_new_bot_passes_check_and_its_own_tests(tmp_path):
    code, out = invoke("init", str(tmp_path / "my-bot"))
    assert code == 0, out
    bot = tmp_path / "my-bot"
    assert {p.relative_to(bot).as_posix() for p in bot.rglob("*") if p.is_file()} == {
        "bot.toml",
        "plugins/hello.py",
        "tests/test_bot.py",
        "pytest.ini",
        "README.md",
        ".gitignore",
    }
    checked = run(["-m", "bot_core", "check", "--config", "bot.toml"], cwd=bot)
    assert checked.returncode == 0, checked.stderr
    assert "profile main: plugins answering: optout, hello, fallback" in checked.stdout
    tested = run(["-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=bot)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "3 passed" in tested.stdout
    assert not list(bot.glob("*.db"))  # the tests ran on databases of their own


def test_init_writes_into_the_current_folder_and_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("mine\n")
    code, out = invoke("init")
    assert code == 1 and "not overwriting existing files: README.md" in out
    assert (tmp_path / "README.md").read_text() == "mine\n" and not (tmp_path / "bot.toml").exists()
    (tmp_path / "README.md").unlink()
    code, out = invoke("init")
    assert code == 0 and (tmp_path / "bot.toml").exists() and "cd " not in out


def install_metadata(site: Path, project: Path) -> None:
    """What `pip install` would record for ``project``: a dist-info with its entry points."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    lines = ["[bot_core]"]
    lines += [f"{name} = {target}" for name, target in meta["entry-points"]["bot_core"].items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_a_new_plugin_package_declares_its_entry_point_and_its_tests_pass(tmp_path):
    code, out = invoke("init", "--plugin", "store_hours", str(tmp_path / "pkg"))
    assert code == 0, out
    package = tmp_path / "pkg"
    pyproject = tomllib.loads((package / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "bot-core-store-hours"
    assert pyproject["project"]["entry-points"]["bot_core"] == {"store_hours": "bot_core_store_hours"}
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]
    assert any(dep.startswith("bot-core") for dep in pyproject["project"]["dependencies"])
    assert (package / "src" / "bot_core_store_hours" / "__init__.py").exists()
    site = tmp_path / "site"
    install_metadata(site, package)
    path = [package / "src", site]
    checked = run(["-m", "bot_core", "check", "--config", "bot.toml"], cwd=package, pythonpath=path)
    assert checked.returncode == 0, checked.stderr
    assert "store_hours" in checked.stdout and "entry point" not in checked.stderr
    tested = run(["-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=package, pythonpath=path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "3 passed" in tested.stdout


def test_a_plugin_package_goes_in_a_folder_named_after_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = invoke("init", "--plugin", "weather")
    assert code == 0, out
    assert (tmp_path / "bot-core-weather" / "src" / "bot_core_weather" / "__init__.py").exists()
    assert "cd bot-core-weather" in out


@pytest.mark.parametrize("name, message", [
    ("Weather", "'Weather' is not a plugin name"),
    ("my-plugin", "'my-plugin' is not a plugin name"),
    ("echo", "a plugin named 'echo' is already loaded"),
])  # fmt: skip
def test_a_plugin_name_must_be_usable_and_free(tmp_path, monkeypatch, name, message):
    monkeypatch.chdir(tmp_path)
    code, out = invoke("init", "--plugin", name)
    assert code == 1 and message in out
    assert not list(tmp_path.iterdir())
