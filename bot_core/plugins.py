"""Finding, loading and ordering plugins, and calling their hooks.

Plugins come from three places, registered the same way: the ``bot_core`` entry-point group
(bundled plugins are entry points of bot-core itself; third-party packages add their own), and
the modules of the config's ``plugins_dir``. A plugin's name is its entry-point name or module
name, and that name is what ``plugins = [...]`` and ``plugin_config.NAME`` refer to.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .config import Config, NumberState
from .errors import ConfigError

log = logging.getLogger("bot_core.plugins")

ENTRY_POINT_GROUP = "bot_core"
BUNDLED_DIST = "bot-core"
# Compliance comes first on every profile, listed or not, unless its config disables it.
ALWAYS_FIRST = ("optout",)


@dataclass
class Plugins:
    """The loaded plugins of one bot: a pluggy manager plus where each plugin came from."""

    manager: pluggy.PluginManager
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return sorted(self.sources)

    def hooks_of(self, name: str) -> list[str]:
        plugin = self.manager.get_plugin(name)
        return sorted(
            hook.name
            for hook in self.manager.get_hookcallers(plugin) or ()
            if not hook.name.startswith("_")
        )

    def impl(self, hook: str, plugin: str) -> pluggy.HookImpl | None:
        for impl in getattr(self.manager.hook, hook).get_hookimpls():
            if impl.plugin_name == plugin:
                return impl
        return None

    def default_order(self) -> list[str]:
        """Every plugin: ALWAYS_FIRST, tryfirst handlers, by name, trylast handlers last."""

        def rank(name: str) -> tuple[int, str]:
            if name in ALWAYS_FIRST:
                return (0, name)
            impl = self.impl("handle_message", name)
            if impl is not None and impl.tryfirst:
                return (1, name)
            if impl is not None and impl.trylast:
                return (3, name)
            return (2, name)

        return sorted(self.sources, key=rank)

    def active(self, number: NumberState) -> list[str]:
        """The plugins that see messages to ``number``, in the order they are consulted."""
        if number.plugins is None:
            order = self.default_order()
        else:
            order = [n for n in ALWAYS_FIRST if n in self.sources and n not in number.plugins]
            order += list(number.plugins)
        return [n for n in order if number.plugin_config.get(n, {}).get("enabled", True) is not False]

    def check(self, config: Config) -> None:
        """Every plugin a profile or number names must be loaded."""
        where = [(f"profiles.{p.name}.plugins", p.plugins) for p in config.profiles.values()]
        where += [(f'numbers."{n.number}".plugins', n.plugins) for n in config.numbers.values()]
        for key, names in where:
            for name in names or ():
                if name not in self.sources:
                    raise ConfigError(
                        f"{config.path or '<dict>'}: {key}: unknown plugin {name!r}"
                        f" (loaded plugins: {', '.join(self.names) or 'none'})"
                    )

    async def call(self, hook: str, plugins: Iterable[str] | None = None, **kwargs: Any) -> None:
        """Call every implementation of an observer hook, in order; log and ignore failures."""
        for name in self.names if plugins is None else plugins:
            impl = self.impl(hook, name)
            if impl is None:
                continue
            try:
                await call_impl(impl, kwargs)
            except Exception:
                log.exception("plugin %r failed in %s", name, hook)


async def call_impl(impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
    """Call one hook implementation with the arguments it asks for; await it if needed."""
    result = impl.function(*(kwargs[name] for name in impl.argnames))
    if inspect.isawaitable(result):
        result = await result
    return result


def load_plugins(config: Config | None = None, *, installed: bool | Iterable[str] = True) -> Plugins:
    """A plugin manager with the bundled plugins, installed ones and the config's plugins_dir.

    ``installed=False`` loads only bot-core's own bundled plugins (what a test harness wants:
    nothing installed on the machine leaks in); a list of names loads just those.
    """
    manager = pluggy.PluginManager("bot_core")
    manager.add_hookspecs(hookspecs)
    plugins = Plugins(manager)
    wanted = None if installed is True else set(installed or ())
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist.name if entry_point.dist else "?"
        bundled = dist == BUNDLED_DIST
        if not bundled and wanted is not None and entry_point.name not in wanted:
            continue
        source = "bundled" if bundled else f"entry point {dist}"
        _register(plugins, entry_point.name, entry_point.load(), source)
    if config is not None and config.bot.plugins_dir is not None:
        for path in sorted(config.bot.plugins_dir.glob("*.py")):
            if not path.name.startswith("_"):
                _register(plugins, path.stem, _import_file(path), f"plugins_dir {path}")
    if config is not None:
        plugins.check(config)
    return plugins


def _register(plugins: Plugins, name: str, module: ModuleType, source: str) -> None:
    if name in plugins.sources:
        raise ConfigError(
            f"two plugins are named {name!r}: {plugins.sources[name]} and {source}; rename one"
        )
    plugins.manager.register(module, name=name)
    plugins.sources[name] = source


def _import_file(path: Path) -> ModuleType:
    module_name = f"bot_core_plugins_dir_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"plugin file {path} failed to import: {exc!r}") from exc
    return module
