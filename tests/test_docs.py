"""Every code block of README.md and docs/ runs, so that the docs stay true.

A block is tested by its language and a directive in an HTML comment on the line above it
(``<!-- test: run -->``): the rules are in docs/contributing.md, "Every code block runs".
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import nacl.signing
import pytest

from bot_core.config import load_config
from bot_core.errors import ConfigError
from bot_core.plugins import load_plugins
from bot_core.webhooks import parse_webhook

from .conftest import bytecode_cached, free_port, healthy, wait_for
from .inprocess import bot_core

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
DIRECTIVE = re.compile(r"^\s*<!-- test: (?P<directive>.+?) -->\s*$")
LANGUAGES = {"python", "toml", "json", "console", "sh", "text"}
DIRECTIVES = re.compile(r"(|continue|invalid|webhook|run|run with server( .*)?|file \S+|skip: \S.*)")
# What the docs' ${VAR}s read: placeholders, and a real Ed25519 public key (it is checked).
ENVIRON = {
    "SUPPORT_PROFILE_SECRET": "support-secret-for-docs",
    "TELNYX_API_KEY": "KEY-for-docs",
    "SUPPORT_PROFILE_ID": "4001a2b3-0000-4000-8000-000000000002",
    "TELNYX_PUBLIC_KEY": base64.b64encode(bytes(nacl.signing.SigningKey(b"d" * 32).verify_key)).decode(),
}


@dataclasses.dataclass
class Block:
    page: Path
    line: int
    lang: str
    text: str
    directive: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, dedented, with the directive above each."""
    found, lines, index = [], page.read_text().splitlines(), 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, start = match["indent"], index
        index += 1
        body = []
        while lines[index].rstrip() != indent + "```":
            body.append(lines[index].removeprefix(indent))
            index += 1
        above = DIRECTIVE.match(lines[start - 1]) if start else None
        found.append(Block(page, start + 1, match["lang"], "\n".join(body) + "\n", above["directive"] if above else ""))
        index += 1
    return found


ALL = [block for page in PAGES for block in blocks(page)]


def _ids(items: list) -> list[str]:
    return [item.where if isinstance(item, Block) else item[0].where for item in items]


def _python_units() -> list[tuple[Block, ...]]:
    """Each python test file: a block and the ``continue`` blocks after it."""
    units: list[list[Block]] = []
    for block in ALL:
        if block.lang != "python" or block.directive.startswith(("skip:", "file ")):
            continue
        if block.directive == "continue":
            assert units and units[-1][0].page == block.page, f"{block.where}: nothing to continue"
            units[-1].append(block)
        else:
            units.append([block])
    return [tuple(unit) for unit in units]


def test_every_block_is_tested_or_says_why_not() -> None:
    problems = []
    for block in ALL:
        if block.lang not in LANGUAGES:
            problems.append(f"{block.where}: a fence needs a language ({', '.join(sorted(LANGUAGES))})")
        elif not DIRECTIVES.fullmatch(block.directive):
            problems.append(f"{block.where}: unknown directive {block.directive!r} (a skip says why)")
        elif block.lang in {"console", "sh"} and not block.directive.startswith(("run", "skip:")):
            problems.append(f"{block.where}: run it or skip it, saying why")
    assert not problems, "\n".join(problems)


PYTHON = _python_units()


@pytest.mark.parametrize("unit", PYTHON, ids=_ids(PYTHON))
def test_python_block_runs(unit: tuple[Block, ...], pytester: pytest.Pytester) -> None:
    first = unit[0]
    for folder in _write_files(first.page, pytester.path):
        pytester.syspathinsert(folder)
    source = "\n".join(block.text for block in unit)
    pytester.makepyfile(test_snippet=source)
    # Without hypothesis's plugin: loading it again for each run cost a second of CPU.
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-W", "error", "-q")
    outcomes = result.parseoutcomes() if result.ret != pytest.ExitCode.NO_TESTS_COLLECTED else {}
    assert not outcomes.get("failed") and not outcomes.get("errors"), f"{first.where}:\n{result.stdout.str()}"
    if re.search(r"^def test_", source, re.MULTILINE):
        assert result.ret == pytest.ExitCode.OK and outcomes.get("passed"), f"{first.where}:\n{result.stdout.str()}"
    else:
        assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED, f"{first.where}:\n{result.stdout.str()}"


def _is_bot_toml(block: Block) -> bool:
    return block.lang == "toml" and block.directive in {"", "file bot.toml", "invalid"}


TOML = [block for block in ALL if block.lang == "toml" and not block.directive.startswith("skip:")]


@pytest.mark.parametrize("block", TOML, ids=_ids(TOML))
def test_toml_block_is_a_valid_config(block: Block, tmp_path: Path) -> None:
    if not _is_bot_toml(block):  # another file, e.g. a plugin's pyproject.toml
        tomllib.loads(block.text)
        return
    _write_files(block.page, tmp_path)
    path = tmp_path / "bot.toml"
    path.write_text(block.text)
    if block.directive == "invalid":  # shows a mistake: `bot-core check` must refuse it
        with pytest.raises(ConfigError):
            load_plugins(load_config(path, environ=ENVIRON))
    else:
        load_plugins(load_config(path, environ=ENVIRON))


JSON = [block for block in ALL if block.lang == "json" and not block.directive.startswith("skip:")]


@pytest.mark.parametrize("block", JSON, ids=_ids(JSON))
def test_json_block_parses(block: Block) -> None:
    if block.directive == "webhook":
        assert parse_webhook(block.text.encode()).kind in {"message", "status"}
    else:
        json.loads(block.text)


def _write_files(page: Path, folder: Path) -> set[Path]:
    """Write the page's ``file PATH`` blocks under ``folder``; returns the folders of .py files."""
    python = set()
    for block in ALL:
        if block.page == page and block.directive.startswith("file "):
            path = folder / block.directive.removeprefix("file ").strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text)
            if path.suffix == ".py":
                python.add(path.parent)
    return python


RUNNABLE = [page for page in PAGES if any(b.page == page and b.directive.startswith("run") for b in ALL)]


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(page.relative_to(ROOT)) for page in RUNNABLE])
def test_commands_of_page_run(page: Path, tmp_path: Path) -> None:
    """The page's console and sh blocks, in order, in one folder (so a command sees the ones before)."""
    env = bytecode_cached({**os.environ, **ENVIRON, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1",
                           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})  # fmt: skip
    env.pop("BOT_CORE_CONFIG", None)
    _write_files(page, tmp_path)
    for block in blocks(page):
        if _is_bot_toml(block):
            (tmp_path / "bot.toml").write_text(block.text)
        if not block.directive.startswith("run"):
            continue
        server, replace = None, {}
        if block.directive.startswith("run with server"):
            port = free_port()
            server = _serve(tmp_path, port, env, block.directive.removeprefix("run with server").split())
            replace = {"localhost:8000": f"127.0.0.1:{port}"}
        try:
            for command, expected in _commands(block):
                for old, new in replace.items():
                    command = command.replace(old, new)
                _check_command(block, command, expected, tmp_path, env)
        finally:
            if server is not None:
                server.terminate()
                server.wait(20)


def _serve(folder: Path, port: int, env: dict[str, str], args: list[str]) -> subprocess.Popen:
    """`bot-core serve ARGS` in ``folder`` (the demo bot without ``--config``), once it answers."""
    with (folder / "serve.log").open("ab") as log:
        server = subprocess.Popen(["bot-core", "serve", *args, "--port", str(port)], cwd=folder, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    wait_for(lambda: server.poll() is not None or healthy(f"http://127.0.0.1:{port}"), timeout=20)
    assert server.poll() is None, (folder / "serve.log").read_text()
    return server


def _commands(block: Block) -> list[tuple[str, list[str] | None]]:
    """(command, expected output) pairs: a sh block is one script; in a console block each ``$``
    line is a command (continued over lines ending in ``\\``) and the lines after it its output."""
    if block.lang == "sh":
        return [("set -e\n" + block.text, None)]
    commands: list[tuple[str, list[str]]] = []
    lines = block.text.splitlines()
    while lines:
        line = lines.pop(0)
        if not line.startswith("$ "):
            assert commands, f"{block.where}: output before any $ command"
            commands[-1][1].append(line)
            continue
        command = line.removeprefix("$ ")
        while command.endswith("\\"):
            command = command[:-1] + lines.pop(0)
        commands.append((command, []))
    return commands


# A command the test runs in its own process: `bot-core ARGS`, maybe fed by a printf or an echo
# of a quoted text (only \n escapes), maybe with a comment; anything else goes to bash.
_FED = re.compile(r"""(?:(?P<printf>printf '[^'\\%]*(?:\\n[^'\\%]*)*')|(?P<echo>echo '[^']*'|echo "[^"$`\\]*")) \| """)
_SHELL = re.compile(r"[|&;<>()$`*?\[\]{}~\\\n]")


def _in_process(script: str) -> list[tuple[list[str], str | None]] | None:
    """The `bot-core` runs ``script`` is, each with its stdin, when that is all it is (None if not);
    a script stops at the first that fails, as `set -e` does."""
    steps = []
    for line in script.removeprefix("set -e\n").splitlines():
        if not line.strip():
            continue
        fed, stdin = _FED.match(line), None
        if fed:
            text = shlex.split(fed[0].removesuffix(" | "))[1]
            stdin = text.replace("\\n", "\n") if fed["printf"] else text + "\n"
            line = line[fed.end() :]
        unquoted = re.sub(r"\s+#.*", "", re.sub(r"'[^']*'|\"[^\"]*\"", "''", line))
        if _SHELL.search(unquoted) or not (args := shlex.split(line, comments=True)) or args[0] != "bot-core":
            return None
        steps.append((args[1:], stdin))
    return steps


def _run(command: str, cwd: Path, env: dict, shell: bool) -> subprocess.CompletedProcess:
    """``command`` as bash runs it: `bot-core` commands in this process (tests/inprocess.py), as
    starting Python for each costs half a second; README's commands, the front page, in a real shell."""
    steps = None if shell else _in_process(command)
    if steps is None:
        return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    done = subprocess.CompletedProcess(command, 0, "", "")
    for args, stdin in steps:
        step = bot_core(*args, input=stdin, cwd=str(cwd), env={**ENVIRON, "NO_COLOR": "1", "BOT_CORE_CONFIG": None})
        done.stdout += step.stdout
        done.stderr += step.stderr
        done.returncode = step.returncode
        if step.returncode:
            break
    return done


def _check_command(block: Block, command: str, expected: list[str] | None, cwd: Path, env: dict) -> None:
    done = _run(command, cwd, env, shell=block.page == ROOT / "README.md")
    shown = done.stdout if done.returncode == 0 else done.stderr
    wanted_failure = bool(expected) and expected[0].startswith("Error:")
    assert (done.returncode != 0) == wanted_failure, (
        f"{block.where}: `{command}` exited {done.returncode}\n{done.stdout}\n{done.stderr}")  # fmt: skip
    if expected:
        assert _matches(expected, shown.splitlines()), (
            f"{block.where}: `{command}` printed\n{shown}\nnot\n" + "\n".join(expected))  # fmt: skip


def _matches(expected: list[str], got: list[str]) -> bool:
    """Whether ``got`` is ``expected``, with ``…`` for any text and a ``…`` line for any lines."""
    pattern = "".join(
        r"(?:.*\n)*?" if line.strip() == "…" else ".*".join(map(re.escape, line.rstrip().split("…"))) + r"\n"
        for line in expected
    )
    return re.fullmatch(pattern, "".join(line.rstrip() + "\n" for line in got)) is not None


def test_the_matcher_reads_ellipses() -> None:
    assert _matches(["MDR 8: … queued", "…", "done"], ["MDR 8: a -> b queued", "x", "y", "done"])
    assert _matches(["a", "…", "b"], ["a", "b"])
    assert not _matches(["MDR 8: … queued"], ["MDR 9: queued"])
    assert not _matches(["a"], ["a", "b"])


def test_commands_continue_over_backslashes() -> None:
    block = Block(ROOT / "README.md", 1, "console", "$ bot-core check \\\n  --config bot.toml\nok\n$ true\n")
    assert _commands(block) == [("bot-core check   --config bot.toml", ["ok"]), ("true", [])]
