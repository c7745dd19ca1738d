"""Finding, loading and ordering plugins, and calling their hooks.

Plugins come from three places, registered the same way: the ``bot_core`` entry-point group
(bundled plugins are entry points of bot-core itself; third-party packages add their own), and
the modules of the config's ``plugins_dir``. A plugin's name is its entry-point name or module
name, and that name is what ``plugins = [...]`` and ``plugin_config.NAME`` refer to.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import inspect
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .config import Config, NumberState
from .errors import ConfigError, SettingsError
from .keywords import normalize_keyword

log = logging.getLogger("bot_core.plugins")

ENTRY_POINT_GROUP = "bot_core"
BUNDLED_DIST = "bot-core"
# Compliance comes first on every profile, listed or not, unless its config disables it.
ALWAYS_FIRST = ("optout",)
# The catch-all answers whatever is left, so it goes last wherever it is active.
ALWAYS_LAST = ("fallback",)


@dataclass
class Plugins:
    """The loaded plugins of one bot: a pluggy manager plus where each plugin came from."""

    manager: pluggy.PluginManager
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return sorted(self.sources)

    def add(self, name: str, plugin: object, source: str) -> None:
        """Register ``plugin`` (a module or object with hook implementations) as ``name``.

        ``source`` says where it came from (``bot-core plugins`` prints it). Refuses a second
        plugin of the same name, and pluggy wrappers (see :func:`_refuse_wrappers`).
        """
        if name in self.sources:
            raise ConfigError(f"two plugins are named {name!r}: {self.sources[name]} and {source}; rename one")
        self.manager.register(plugin, name=name)
        _refuse_wrappers(self.manager, name, plugin)
        self.sources[name] = source

    def hooks_of(self, name: str) -> list[str]:
        plugin = self.manager.get_plugin(name)
        return sorted(
            hook.name
            for hook in self.manager.get_hookcallers(plugin) or ()
            if not hook.name.startswith("_")
        )

    def impl(self, hook: str, plugin: str) -> pluggy.HookImpl | None:
        impls: list[pluggy.HookImpl] = getattr(self.manager.hook, hook).get_hookimpls()
        for impl in impls:
            if impl.plugin_name == plugin:
                return impl
        return None

    def active(self, number: NumberState) -> list[str]:
        """The plugins that see messages to ``number``, in the order they are consulted.

        A configured list is kept as written, except that ALWAYS_FIRST plugins come first
        (listed or not) and ALWAYS_LAST ones, when listed, last. Without a list only the
        ALWAYS_FIRST ones answer: a plugin answers customers only where a profile names it, so
        a demo plugin or one pip-installed for another bot never answers a support line.
        """
        order = [n for n in ALWAYS_FIRST if n in self.sources]
        order += [n for n in number.plugins or () if n not in ALWAYS_FIRST + ALWAYS_LAST]
        order += [n for n in ALWAYS_LAST if n in (number.plugins or ())]
        return [n for n in order if number.plugin_config.get(n, {}).get("enabled", True) is not False]

    def answering(self, config: Config) -> list[str]:
        """For each profile, a line saying which plugins answer its customers (``check`` and the
        startup log print them, so that nobody learns it from a customer)."""
        lines = []
        for name, profile in config.profiles.items():
            if not profile.enabled:
                lines.append(f"profile {name}: DISABLED: nothing answers")
                continue
            active = ", ".join(self.active(config.profile_state(name))) or "none"
            if profile.plugins is None:
                active += " (no `plugins` list: only opt-out compliance answers; list the plugins that should)"
            lines.append(f"profile {name}: plugins answering: {active}")
        return lines

    def check(self, config: Config) -> None:
        """Every plugin a profile or number names must be loaded, with sound settings and keywords.

        Called by ``load_plugins(config)``, so ``bot-core check`` and ``serve`` both refuse a
        config that fails here. Every problem is reported at once, one a line.
        """
        problems = self._unknown(config)
        for scope, number, own in _scopes(config):
            active = self.active(number)
            # A plugin's table is checked whether or not the plugin answers there: a typo in
            # the settings of a plugin switched on later must not wait until then to surface.
            # A number's scope checks only what it changes, so a profile's mistake is told once.
            names = [n for n in dict.fromkeys([*active, *number.plugin_config])
                     if n in self.sources and (own is None or n in own)]  # fmt: skip
            wrong = {name: self._check_settings(config, scope, number, name) for name in names}
            problems += [problem for found in wrong.values() for problem in found]
            # A plugin whose settings are wrong cannot say which keywords they claim.
            problems += self._check_keywords(config, scope, number, [n for n in active if not wrong.get(n)])
        if problems:
            raise ConfigError("\n".join(problems))

    def _unknown(self, config: Config) -> list[str]:
        """A problem for each plugin named in a ``plugins`` list or a ``plugin_config`` table that is not loaded."""
        # Plugin names: a `plugins` list, or the keys of a `plugin_config` table.
        where: list[tuple[str, Iterable[str] | None]]
        where = [(f"profiles.{p.name}.plugins", p.plugins) for p in config.profiles.values()]
        where += [(f'numbers."{n.number}".plugins', n.plugins) for n in config.numbers.values()]
        where += [(f"profiles.{p.name}.plugin_config", p.plugin_config) for p in config.profiles.values()]
        where += [(f'numbers."{n.number}".plugin_config', n.plugin_config) for n in config.numbers.values()]
        problems = []
        for key, names in where:
            for name in names or ():
                if name not in self.sources:
                    close = difflib.get_close_matches(name, self.names, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    problems.append(f"{config.path or '<dict>'}: {key}: unknown plugin {name!r}"
                                    f" (loaded plugins: {', '.join(self.names) or 'none'}{hint})")  # fmt: skip
        return problems

    def _check_settings(self, config: Config, scope: str, number: NumberState, name: str) -> list[str]:
        """Ask plugin ``name``'s ``check_config`` about its table in ``scope``; the problems, one a line."""
        problems = []
        source = config.path or "<dict>"
        settings = dict(number.plugin_config.get(name, {}))
        # `enabled` is the framework's (see active()); the plugin checks the rest.
        if not isinstance(settings.pop("enabled", True), bool):
            problems.append(f"{source}: {scope}.plugin_config.{name}.enabled: must be true or false")
        try:
            found = self._call_sync("check_config", name, profile=number.profile, config=settings)
        except ConfigError as exc:
            return [*problems, str(exc)]
        if found is not None and not isinstance(found, dict):
            return [*problems, f"plugin {name!r}: check_config must return {{key: rule}} or None"]
        for key, rule in (found or {}).items():
            problems.append(f"{source}: {scope}.plugin_config.{name}{'.' if key else ''}{key}: {rule}")
        return problems

    def _check_keywords(self, config: Config, scope: str, number: NumberState, active: list[str]) -> list[str]:
        """No two claimants may share a keyword on one profile; ALWAYS_FIRST's words are reserved."""
        claims: dict[str, tuple[str, str]] = {}
        problems = []
        source = config.path or "<dict>"
        for name in active:
            try:
                found = self._call_sync("register_keywords", name, profile=number.profile,
                                        config=number.plugin_config.get(name, {}))  # fmt: skip
            except ConfigError as exc:
                problems.append(str(exc))
                continue
            for item in found or ():
                if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                    problems.append(f"plugin {name!r}: register_keywords must return [(KEYWORD, claimant), ...]")
                    break
                keyword = normalize_keyword(item[0])
                if not keyword:
                    problems.append(f"{source}: {scope}: plugin {name!r} ({item[1]})"
                                    f" claims {item[0]!r}, which has no letters or digits")  # fmt: skip
                    continue
                first = claims.setdefault(keyword, (name, item[1]))
                if first != (name, item[1]):
                    problems.append(f"{source}: {scope}: {_conflict(keyword, first, (name, item[1]))}")
        return problems

    def _call_sync(self, hook: str, name: str, **kwargs: Any) -> Any:
        """Call a config-time hook of one plugin (a plain def) with the arguments it asks for."""
        impl = self.impl(hook, name)
        if impl is None:
            return None
        try:
            result = impl.function(*(kwargs[arg] for arg in impl.argnames))
        except SettingsError as exc:
            if hook == "check_config":  # raised instead of returned: the same problems
                return exc.problems
            raise ConfigError(f"plugin {name!r} failed in {hook}: {exc}") from exc
        except Exception as exc:
            raise ConfigError(f"plugin {name!r} failed in {hook}: {type(exc).__name__}: {exc}") from exc
        if inspect.isawaitable(result):
            getattr(result, "close", lambda: None)()
            raise ConfigError(f"plugin {name!r}: {hook} must be a plain def (it runs before the bot starts)")
        return result

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


def _scopes(config: Config) -> Iterator[tuple[str, NumberState, set[str] | None]]:
    """Each profile, and each number with its own plugin settings, as the plugins would see it,
    with the plugins whose settings the scope changes (None: all of them)."""
    for name in config.profiles:
        yield f"profiles.{name}", config.profile_state(name), None
    for settings in config.numbers.values():
        number = config.number(settings.number)
        if not (settings.plugins is not None or settings.plugin_config) or number is None or number.profile is None:
            continue
        # Its own tables, and plugins its own list turns on that its profile's list does not.
        inherited = set(config.profiles[number.profile].plugins or ())
        own = set(settings.plugin_config) | (set(settings.plugins or ()) - inherited)
        yield f'numbers."{settings.number}"', number, own


def _conflict(keyword: str, first: tuple[str, str], second: tuple[str, str]) -> str:
    reserved = next((c for c in (first, second) if c[0] in ALWAYS_FIRST), None)
    if reserved is not None:
        other = second if reserved is first else first
        return (f"{keyword} is a reserved opt-out keyword (plugin {reserved[0]!r}: {reserved[1]}); "
                f"plugin {other[0]!r} ({other[1]}) cannot claim it")  # fmt: skip
    return (f"keyword {keyword} is claimed twice: by plugin {first[0]!r} ({first[1]}) and by plugin "
            f"{second[0]!r} ({second[1]}); a keyword can have one meaning on a profile")  # fmt: skip


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
        plugins.add(entry_point.name, entry_point.load(), source)
    if config is not None and config.bot.plugins_dir is not None:
        for path in sorted(config.bot.plugins_dir.glob("*.py")):
            if not path.name.startswith("_"):
                plugins.add(path.stem, _import_file(path), f"plugins_dir {path}")
    try:
        manager.check_pending()  # a hookimpl with no hookspec is a typo, not a feature
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {manager.get_name(exc.plugin)!r}: {exc}") from None
    if config is not None:
        plugins.check(config)
    return plugins


def _refuse_wrappers(manager: pluggy.PluginManager, name: str, module: object) -> None:
    """Refuse pluggy's wrapper and hookwrapper implementations: bot-core calls each hook
    implementation itself, one at a time (see hookspecs), so a wrapper would be called as a
    plain function and fail on every message. No bot-core hook is historic, and a plugin
    cannot declare hooks, so historic calls cannot reach a plugin either."""
    for caller in manager.get_hookcallers(module) or ():
        for impl in caller.get_hookimpls():
            if impl.plugin is module and (impl.wrapper or impl.hookwrapper):
                kind = "wrapper=True" if impl.wrapper else "hookwrapper=True"
                manager.unregister(module)
                raise ConfigError(f"plugin {name!r}: hook {caller.name!r} is implemented with @hookimpl({kind}); "
                                  "bot-core calls every implementation itself, in the profile's order, and "
                                  "does not support pluggy wrappers: use a plain @hookimpl")  # fmt: skip


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
