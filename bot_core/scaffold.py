"""``bot-core init``: a new bot, or a new plugin package, written from the templates in templates/.

A bot is a folder with bot.toml (one profile, commented), a plugins/ folder with one small
plugin, tests that pass as they are, and a README. A plugin package is pip-installable, with
its ``bot_core`` entry point, a src layout and tests. Nothing existing is overwritten.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import BotError

_PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_]*")
# (template, file written) for each kind of project; the file names are formatted with the names.
BOT_FILES = (
    ("bot/bot.toml.j2", "bot.toml"),
    ("bot/hello.py.j2", "plugins/hello.py"),
    ("bot/test_bot.py.j2", "tests/test_bot.py"),
    ("bot/pytest.ini.j2", "pytest.ini"),
    ("bot/README.md.j2", "README.md"),
    ("bot/gitignore.j2", ".gitignore"),
)
PLUGIN_FILES = (
    ("plugin/pyproject.toml.j2", "pyproject.toml"),
    ("plugin/__init__.py.j2", "src/{package}/__init__.py"),
    ("plugin/test_plugin.py.j2", "tests/test_{name}.py"),
    ("plugin/bot.toml.j2", "bot.toml"),
    ("plugin/README.md.j2", "README.md"),
    ("bot/gitignore.j2", ".gitignore"),
)


class ScaffoldError(BotError):
    """The project cannot be written: a bad plugin name, or files that already exist."""


def plugin_names(name: str, taken: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """The names a plugin package is made of: plugin, import package, distribution, keyword."""
    if not _PLUGIN_NAME.fullmatch(name):
        raise ScaffoldError(f"{name!r} is not a plugin name: use lowercase letters, digits and _ (e.g. 'weather')")
    if name in taken:
        raise ScaffoldError(f"a plugin named {name!r} is already loaded (bundled or installed): choose another name")
    return {"name": name, "package": f"bot_core_{name}", "dist": f"bot-core-{name.replace('_', '-')}",
            "keyword": name.upper().replace("_", " "), "answer": f"Hello from the {name} plugin!"}  # fmt: skip


def write_bot(directory: Path) -> list[Path]:
    """Write a new bot into ``directory``; the files written."""
    return _write(directory, BOT_FILES, {"name": directory.absolute().name})


def write_plugin(directory: Path, names: dict[str, str]) -> list[Path]:
    """Write a new plugin package (see :func:`plugin_names`) into ``directory``; the files written."""
    return _write(directory, PLUGIN_FILES, names)


def _write(directory: Path, files: tuple[tuple[str, str], ...], values: dict[str, str]) -> list[Path]:
    # Jinja2 is needed only here: importing it lazily keeps `bot-core serve` and plugins light.
    import jinja2

    targets = [(template, directory / path.format(**values)) for template, path in files]
    existing = [str(target) for _, target in targets if target.exists()]
    if existing:
        raise ScaffoldError(f"not overwriting existing files: {', '.join(existing)}")
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("bot_core", "templates"), keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, autoescape=False,
    )  # fmt: skip
    for template, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(environment.get_template(template).render(**values))
    return [target for _, target in targets]
