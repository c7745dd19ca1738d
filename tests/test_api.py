"""The public API stays tidy: sorted exports, documented hooks, every hook exercised by a test."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import bot_core
from bot_core import hookspecs

TESTS = Path(__file__).parent


def hook_names() -> list[str]:
    return [name for name, value in vars(hookspecs).items()
            if inspect.isfunction(value) and hasattr(value, "bot_core_spec")]  # fmt: skip


def test_all_is_sorted_and_importable():
    assert bot_core.__all__ == sorted(bot_core.__all__)
    for name in bot_core.__all__:
        assert getattr(bot_core, name) is not None


def test_a_plugin_module_importing_hookimpl_does_not_load_the_server_stack():
    heavy = ["asyncio", "bot_core.bot", "httpx", "sqlite_utils", "starlette", "uvicorn"]
    code = f"import sys; from bot_core import hookimpl, Reply; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_every_public_name_has_a_docstring():
    for name in bot_core.__all__:
        value = getattr(bot_core, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name


def test_every_hook_is_documented():
    assert {"startup", "shutdown", "handle_message", "delivery_status"} <= set(hook_names())
    for name in hook_names():
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and len(doc.splitlines()) >= 3, f"hook {name} needs a docstring with its calling rules"


def test_every_hook_is_implemented_somewhere_in_the_tests():
    sources = "\n".join(path.read_text() for path in TESTS.rglob("*.py"))
    for name in hook_names():
        implemented = re.search(rf"def {name}\(|{name}=", sources)
        assert implemented, f"no test implements the {name} hook"
