"""Loading bot.toml into typed settings: the bot, Telnyx, sending, Messaging Profiles and numbers.

Every mistake is a line naming the file, the dotted key and the rule, so that ``bot-core check``
can print it as-is; the reader goes on after a mistake, and one :class:`ConfigError` lists them
all, one a line, so a file is fixed in one pass. Secrets never appear in a repr or in an error.
"""

from __future__ import annotations

import base64
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from bot_core.errors import ConfigError
from bot_core.logs import Secret
from bot_core.phone import alphanumeric_sender_id_error, normalize_number
from bot_core.store import is_postgres

T = TypeVar("T")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_REFERENCE = re.compile(r"\$\{([^}]*)(\}?)")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_URL = re.compile(r"https?://[^/?#\s]+([/?#]\S*)?")
_API_BASES = {1: "https://sms.telnyx.com", 2: "https://api.telnyx.com/v2"}
_MANAGEMENT_BASE = "https://api.telnyx.com/v2"
MIN_MASKED = 6
_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array"}


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``: a number of seconds, or ``<number><unit>`` with unit ms, s, m, h or d.

    Raises ``ValueError`` (not ConfigError) so plugins can parse durations in their own settings.
    """
    if isinstance(value, str):
        if not (match := _DURATION.fullmatch(value.strip())):
            raise ValueError(f"{value!r} is not a duration: write a number >= 0 and a unit (ms, s, m, h, d): '15m'")
        seconds = float(match[1]) * _UNITS[match[2]]
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a duration: use seconds or a string like '30s', '15m', '2h'")
    else:
        seconds = float(value)
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"{value!r} is not a duration: must be a finite number of seconds >= 0")
    return seconds


def _join(prefix: str, *parts: str) -> str:
    """The dotted TOML key of ``parts`` under ``prefix``, quoting parts that are not bare keys."""
    quoted = [p if _BARE_KEY.fullmatch(p) else json.dumps(p, ensure_ascii=False) for p in parts]
    return ".".join(([prefix] if prefix else []) + quoted)


def _error(source: str, key: str, rule: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {rule}" if key else f"{source}: {rule}")


def _type_name(value: object) -> str:
    return "a table" if isinstance(value, Mapping) else _TYPE_NAMES.get(type(value), type(value).__name__)


def _interpolate(value: Any, key: str, source: str, environ: Mapping[str, str], problems: list[str],
                 secrets: list[str]) -> Any:  # fmt: skip
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string under ``value`` (keys are left alone).

    Every value taken from the environment is a secret: it is added to ``secrets`` (for masking
    in logs, errors and output) and the string holding it becomes a :class:`Secret`, whose
    repr is masked (``repr(bot.config)``). Mistakes are added to ``problems``.
    """
    if isinstance(value, Mapping):
        return {k: _interpolate(v, _join(key, k), source, environ, problems, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_interpolate(v, f"{key}[{i}]", source, environ, problems, secrets) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    before = len(secrets)

    def substitute(match: re.Match[str]) -> str:
        name, has_default, default = match[1].partition(":-")
        if not match[2] or not _VARIABLE.fullmatch(name):
            problems.append(str(_error(source, key, "malformed ${...}: write ${NAME} or ${NAME:-default}")))
        elif environ.get(name):
            secrets.append(environ[name])
            return environ[name]
        elif has_default:  # as in the shell, an empty variable also takes the default
            return default
        elif name in environ:
            return ""
        else:
            problems.append(str(_error(source, key, f"environment variable {name} is not set "
                                                    f"(use ${{{name}:-default}} for a default)")))  # fmt: skip
        return match[0]  # left as written: the mistake is reported once, not again as an empty value

    result = _REFERENCE.sub(substitute, value)
    return Secret(result) if len(secrets) > before else result


class _Table:
    """One TOML table being read: typed getters, then a leftovers check.

    A getter that meets a mistake reports it (file, key, rule) to the ``problems`` its whole
    file shares and returns the default, so reading goes on and every mistake is found.
    """

    def __init__(self, data: Mapping[str, Any], key: str, source: str, problems: list[str]) -> None:
        self.data, self.key, self.source, self.problems = data, key, source, problems
        self.seen: set[str] = set()

    def error(self, rule: str, *parts: str) -> ConfigError:
        return _error(self.source, _join(self.key, *parts), rule)

    def report(self, rule: str, *parts: str) -> None:
        self.problems.append(str(self.error(rule, *parts)))

    def get(self, name: str, kinds: tuple[type, ...], what: str, default: Any = None) -> Any:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        # bool is an int subclass: `max_parts = true` must not pass as 1, nor `enabled = 1` as true.
        if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
            self.report(f"must be {what}, not {_type_name(value)}", name)
            return default
        return value

    def table(self, name: str) -> _Table:
        return _Table(self.get(name, (Mapping,), "a table", {}), _join(self.key, name), self.source, self.problems)

    def subtables(self) -> dict[str, _Table]:
        return {name: self.table(name) for name in self.data}

    def string(self, name: str, default: str | None = None, *, empty_is_unset: bool = False) -> str | None:
        value = self.get(name, (str,), "a string", default)
        return None if empty_is_unset and value == "" else value

    def boolean(self, name: str, default: bool) -> bool:
        value: bool = self.get(name, (bool,), "true or false", default)
        return value

    def integer(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
        value: int = self.get(name, (int,), "an integer", default)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            self.report(f"must be an integer {bounds}, not {value}", name)
            return default
        return value

    def choice(self, name: str, choices: tuple[Any, ...], default: Any) -> Any:
        value = self.get(name, (type(default),), _type_name(default), default)
        if value not in choices:
            self.report(f"must be {' or '.join(map(repr, choices))}, not {value!r}", name)
            return default
        return value

    def rate(self, name: str, default: float | None = None) -> float | None:
        value = self.get(name, (int, float), "a number", default)
        if value is not None and not (math.isfinite(value) and value >= 0):
            self.report(f"must be a number of messages per second >= 0, not {value}", name)
            value = default
        return None if value is None else float(value)

    def duration(self, name: str, default: float) -> float:
        value = self.get(name, (str, int, float), "a duration such as 10 or '30s'", default)
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.report(str(exc), name)
            return default

    def path(self, name: str, base: Path, default: str | None = None) -> Path | None:
        value = self.get(name, (str, os.PathLike), "a path", default)
        return base / Path(value).expanduser() if value not in (None, "") else None

    def url(self, name: str, default: str | None = None) -> str | None:
        if (value := self.string(name, empty_is_unset=True)) is None:
            return default
        if not _URL.fullmatch(value):
            self.report("must be an http(s) URL such as https://example.com", name)
            return default
        return value.rstrip("/")

    def names(self, name: str) -> tuple[str, ...] | None:
        value = self.get(name, (list, tuple), "an array of plugin names")
        if value is not None and not all(isinstance(item, str) and item for item in value):
            self.report("must be an array of plugin names (non-empty strings)", name)
            return None
        return None if value is None else tuple(dict.fromkeys(value))

    def phone_numbers(self, name: str) -> tuple[str, ...]:
        numbers = []
        for i, text in enumerate(self.get(name, (list, tuple), "an array of phone numbers", [])):
            try:
                numbers.append(normalize_number(text, strict=True))
            except ValueError as exc:
                self.problems.append(str(_error(self.source, f"{_join(self.key, name)}[{i}]",
                                                f"invalid phone number: {exc}")))  # fmt: skip
        return tuple(dict.fromkeys(numbers))

    def plugin_config(self) -> dict[str, dict[str, Any]]:
        return {plugin: dict(table.data) for plugin, table in self.table("plugin_config").subtables().items()}

    def done(self) -> None:
        """Refuse keys nothing read: they are typos, or options of another version."""
        for name in self.data:
            if name not in self.seen:
                where = f"in [{self.key}]" if self.key else "at the top level"
                close = difflib.get_close_matches(name, sorted(self.seen), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problems.append(str(_error(self.source, "", f"unknown key {name!r} {where}{hint}")))

    def build(self, cls: type[T], **values: Any) -> T:
        """``cls(**values)``, once every key of the table has been read."""
        self.done()
        return cls(**values)


@dataclass(frozen=True)
class BotSettings:
    """The ``[bot]`` table; paths are already resolved against the config file's folder."""

    database: Path | str  # a SQLite file, or a postgresql:// URL
    public_url: str | None
    plugins_dir: Path | None
    sandbox: bool
    verify_signatures: bool
    plugin_timeout: float
    shutdown_grace: float
    fallback_reply: str
    max_parts: int
    log_format: str
    max_replies: int = 10
    store_timeout: float = 1.0
    lease: float = 60.0
    poll_interval: float = 1.0


@dataclass(frozen=True)
class TelnyxSettings:
    """The ``[telnyx]`` table: which API to speak and how to authenticate."""

    api_version: int
    api_base: str
    api_key: str | None = field(repr=False)
    public_key: str | None
    management_base: str
    webhook_failover_url: str | None = None  # set on Telnyx profiles by `bot-core telnyx sync`


@dataclass(frozen=True)
class SendingSettings:
    """The ``[sending]`` table: retries, backoff and pacing of outbound messages (seconds)."""

    max_attempts: int
    backoff_initial: float
    backoff_max: float
    rate: float
    timeout: float


@dataclass(frozen=True)
class InboxSettings:
    """The ``[inbox]`` table: the operator pages and handoff to a person.

    ``handback_after`` applies whether or not the pages are enabled: a conversation a plugin
    handed to a person returns to the bot after that long with no operator reply (0: never).
    """

    enabled: bool = False
    secret_key: str | None = field(default=None, repr=False)
    handback_after: float = 1800.0
    poll_interval: float = 0.5
    login_delay: float = 1.0


@dataclass(frozen=True)
class Profile:
    """A Messaging Profile; ``numbers`` holds every number assigned to it, by its list or a [numbers] table."""

    name: str
    enabled: bool
    secret: str = field(repr=False)
    numbers: tuple[str, ...]
    plugins: tuple[str, ...] | None
    plugin_config: dict[str, dict[str, Any]]
    alphanumeric_sender_id: str | None
    send_rate: float | None
    telnyx_profile_id: str | None


@dataclass(frozen=True)
class NumberSettings:
    """A ``[numbers."+1..."]`` table as written: overrides for one number, unresolved."""

    number: str
    profile: str | None
    plugins: tuple[str, ...] | None
    plugin_config: dict[str, dict[str, Any]]
    send_rate: float | None


@dataclass(frozen=True)
class NumberState:
    """A number resolved against its profile: what `bot-core check` and the pipeline use."""

    number: str
    profile: str | None
    enabled: bool
    reason: str | None
    plugins: tuple[str, ...] | None
    plugin_config: dict[str, dict[str, Any]]
    send_rate: float | None
    capable: bool = True


def _first_set(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


@dataclass(frozen=True)
class Config:
    """The whole of bot.toml, checked; answers which profile, plugins and rate apply to a number."""

    path: Path | None
    base_dir: Path
    bot: BotSettings
    telnyx: TelnyxSettings
    sending: SendingSettings
    profiles: dict[str, Profile]
    numbers: dict[str, NumberSettings]
    inbox: InboxSettings = InboxSettings()
    environment_values: tuple[str, ...] = field(default=(), repr=False)  # what ${VAR} filled in

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | os.PathLike[str] = ".", source: str = "<dict>",
                  environ: Mapping[str, str] | None = None, problems: list[str] | None = None) -> Config:  # fmt: skip
        """Check ``data`` (parsed bot.toml) and build a Config; ``source`` names it in errors.

        Raises one ConfigError listing every mistake, one a line; given a ``problems`` list,
        adds them to it instead and returns the Config read around them (with defaults in
        their place), so that ``bot-core check`` can go on to check the plugins' settings.
        """
        if not isinstance(data, Mapping):
            raise _error(source, "", f"must be a table, not {_type_name(data)}")
        found: list[str] = []
        from_environment: list[str] = []
        environ = os.environ if environ is None else environ
        root = _Table(_interpolate(data, "", source, environ, found, from_environment), "", source, found)
        base = Path(base_dir).absolute()
        bot = _bot(root.table("bot"), base)
        telnyx = _telnyx(root.table("telnyx"), bot.sandbox)
        sending = _sending(root.table("sending"))
        profiles = {name: _profile(name, table) for name, table in root.table("profiles").subtables().items()}
        numbers: dict[str, NumberSettings] = {}
        for key, table in root.table("numbers").subtables().items():
            try:
                number = normalize_number(key, strict=True)
            except ValueError as exc:
                table.report(f"invalid phone number: {exc}")
                continue
            if number in numbers:
                table.report(f"is the same number as another [numbers] table ({number})")
                continue
            numbers[number] = table.build(
                NumberSettings,
                number=number,
                profile=table.string("profile"),
                plugins=table.names("plugins"),
                plugin_config=table.plugin_config(),
                send_rate=table.rate("send_rate"),
            )
        inbox = _inbox(root.table("inbox"))
        root.done()
        _check_v2_alphanumeric(telnyx, bot.sandbox, profiles, source, found)
        profiles = _assign(profiles, numbers, source, found)
        if problems is not None:
            problems.extend(found)
        elif found:
            raise ConfigError("\n".join(found))
        return cls(
            None,
            base,
            bot,
            telnyx,
            sending,
            profiles,
            numbers,
            environment_values=tuple(dict.fromkeys(from_environment)),
            inbox=inbox,
        )

    @cached_property
    def _owners(self) -> dict[str, str]:
        return {number: profile.name for profile in self.profiles.values() for number in profile.numbers}

    @cached_property
    def _states(self) -> dict[str, NumberState]:
        return {number: self._resolve(number) for number in sorted(self._owners.keys() | self.numbers.keys())}

    def number(self, number: str) -> NumberState | None:
        """The resolved state of ``number`` (any format), or None if it is invalid or not in the config."""
        state = self._states.get(number)  # the hot path: webhooks carry E.164 already
        if state is not None:
            return state
        try:
            return self._states.get(normalize_number(number))
        except ValueError:
            return None

    def _resolve(self, number: str) -> NumberState:
        settings = self.numbers.get(number)
        owner = self._owners.get(number)
        profile = None if owner is None else self.profiles[owner]
        reason = (
            "not assigned to a messaging profile"
            if profile is None
            else None
            if profile.enabled
            else f"messaging profile {profile.name!r} is disabled"
        )
        plugin_config = {name: dict(c) for name, c in getattr(profile, "plugin_config", {}).items()}
        for name, overrides in getattr(settings, "plugin_config", {}).items():
            plugin_config[name] = {**plugin_config.get(name, {}), **overrides}
        return NumberState(
            number,
            getattr(profile, "name", None),
            enabled=reason is None,
            reason=reason,
            plugins=_first_set(getattr(settings, "plugins", None), getattr(profile, "plugins", None)),
            plugin_config=plugin_config,
            send_rate=_first_set(getattr(settings, "send_rate", None), getattr(profile, "send_rate", None)),
        )

    def profile_state(self, name: str) -> NumberState:
        """The settings a number of profile ``name`` gets when it has no [numbers] table of its own."""
        profile = self.profiles[name]
        return NumberState("", name, enabled=profile.enabled, reason=None, plugins=profile.plugins,
                           plugin_config=profile.plugin_config, send_rate=profile.send_rate)  # fmt: skip

    def numbers_state(self) -> list[NumberState]:
        """Every number the config knows (listed by a profile or given a [numbers] table), sorted."""
        return list(self._states.values())

    def enabled_numbers(self) -> list[str]:
        """The numbers that take messages: assigned to an enabled profile, sorted."""
        return [state.number for state in self.numbers_state() if state.enabled]

    def profile_for_sender(self, sender: str) -> Profile | None:
        """The profile owning number ``sender``, else the first whose Alphanumeric Sender ID is ``sender``."""
        state = self.number(sender)
        if state is not None and state.profile is not None:
            return self.profiles[state.profile]
        return next((p for p in self.profiles.values() if p.alphanumeric_sender_id == sender), None)

    def secrets(self) -> list[str]:
        """Every secret in the config, for masking them in logs, errors and output.

        The profile secrets, the API key, and every value filled in from the environment
        (``${VAR}``, in ``plugin_config`` too) of at least :data:`MIN_MASKED` characters:
        masking a shorter one (``LOG_FORMAT=json``) would mangle every line, and a secret that
        short protects nothing.
        """
        environment = [v for v in self.environment_values if len(v) >= MIN_MASKED]
        keys = [k for k in (self.telnyx.api_key, self.inbox.secret_key) if k]
        return [p.secret for p in self.profiles.values()] + keys + environment

    def send_rate_for(self, number: str) -> float:
        """Messages per second for ``number``: its own, its profile's, else ``[sending] rate``."""
        state = self.number(number)
        rate: float = _first_set(state.send_rate if state else None, self.sending.rate)
        return rate


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None,
                problems: list[str] | None = None) -> Config:  # fmt: skip
    """Read bot.toml at ``path``; relative paths in it are relative to its folder, not the cwd.

    ``problems``: as in :meth:`Config.from_dict` (a file that cannot be read or parsed raises).
    """
    source = str(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    config = Config.from_dict(data, base_dir=Path(path).absolute().parent, source=source, environ=environ,
                              problems=problems)  # fmt: skip
    return replace(config, path=Path(path))


def _bot(t: _Table, base: Path) -> BotSettings:
    database: Path | str | None = t.get("database", (str, os.PathLike), "a path or URL", None)
    if not is_postgres(database or ""):  # a URL selects PostgreSQL; anything else is a SQLite file
        if (database := t.path("database", base, "bot.db")) is None:
            t.report("must be a file name or a postgresql:// URL, not empty", "database")
    return t.build(
        BotSettings,
        database=database,
        public_url=t.url("public_url"),
        plugins_dir=t.path("plugins_dir", base),
        sandbox=t.boolean("sandbox", False),
        verify_signatures=t.boolean("verify_signatures", True),
        plugin_timeout=t.duration("plugin_timeout", 10.0),
        shutdown_grace=t.duration("shutdown_grace", 10.0),
        fallback_reply=t.string("fallback_reply", ""),
        max_parts=t.integer("max_parts", 10, 1, 10),
        log_format=t.choice("log_format", ("text", "json"), "text"),
        max_replies=t.integer("max_replies", 10, 1, 1000),
        store_timeout=t.duration("store_timeout", 1.0),
        lease=t.duration("lease", 60.0),
        poll_interval=t.duration("poll_interval", 1.0),
    )


def _is_ed25519_key(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except ValueError:
        return False


def _telnyx(t: _Table, sandbox: bool) -> TelnyxSettings:
    version = t.choice("api_version", (1, 2), 1)
    if (api_key := t.string("api_key", empty_is_unset=True)) is None and version == 2 and not sandbox:
        t.report("is required when api_version = 2 (unless [bot] sandbox = true)", "api_key")
    public_key = t.string("public_key", empty_is_unset=True)
    if public_key is not None and not _is_ed25519_key(public_key):
        t.report("must be a base64 Ed25519 public key (32 bytes once decoded)", "public_key")
    return t.build(
        TelnyxSettings,
        api_version=version,
        api_base=t.url("api_base", _API_BASES[version]),
        api_key=api_key,
        public_key=public_key,
        management_base=t.url("management_base", _MANAGEMENT_BASE),
        webhook_failover_url=t.url("webhook_failover_url"),
    )


def _sending(t: _Table) -> SendingSettings:
    settings = t.build(
        SendingSettings,
        max_attempts=t.integer("max_attempts", 8, 1),
        backoff_initial=t.duration("backoff_initial", 1.0),
        backoff_max=t.duration("backoff_max", 300.0),
        rate=t.rate("rate", 0.0),
        timeout=t.duration("timeout", 10.0),
    )
    if settings.backoff_max < settings.backoff_initial:
        t.report("must be >= backoff_initial", "backoff_max")
    return settings


def _inbox(t: _Table) -> InboxSettings:
    secret_key = t.string("secret_key", empty_is_unset=True)
    if secret_key is not None and len(secret_key) < 32:
        t.report("must be at least 32 characters (`python -c 'import secrets; print(secrets.token_urlsafe())'`)",
                 "secret_key")  # fmt: skip
        secret_key = None
    poll_interval = t.duration("poll_interval", 0.5)
    if poll_interval <= 0:
        t.report("must be more than 0", "poll_interval")
        poll_interval = 0.5
    enabled = t.boolean("enabled", False)
    return t.build(
        InboxSettings,
        enabled=enabled,
        secret_key=secret_key,
        poll_interval=poll_interval,
        handback_after=t.duration("handback_after", 1800.0),
        login_delay=t.duration("login_delay", 1.0),
    )


def _profile(name: str, t: _Table) -> Profile:
    enabled = t.boolean("enabled", True)
    if not (secret := t.string("secret")):
        t.report("is required: the Messaging Profile's secret, a non-empty string", "secret")
    sender_id = t.string("alphanumeric_sender_id")
    if sender_id is not None and (why := alphanumeric_sender_id_error(sender_id)):
        t.report(f"invalid Alphanumeric Sender ID {sender_id!r}: {why}", "alphanumeric_sender_id")
    return t.build(
        Profile,
        name=name,
        enabled=enabled,
        secret=secret,
        numbers=t.phone_numbers("numbers"),
        plugins=t.names("plugins"),
        plugin_config=t.plugin_config(),
        alphanumeric_sender_id=sender_id,
        send_rate=t.rate("send_rate"),
        telnyx_profile_id=t.string("telnyx_profile_id", empty_is_unset=True),
    )


def _check_v2_alphanumeric(telnyx: TelnyxSettings, sandbox: bool, profiles: dict[str, Profile], source: str,
                           problems: list[str]) -> None:  # fmt: skip
    """V2 sends from an alphanumeric sender ID need the profile's Telnyx id.

    Telnyx's OpenAPI spec (team-telnyx/openapi, openapi/spec3.yml, CreateMessageRequest):
    ``messaging_profile_id`` is "required if sending via number pool or with an alphanumeric
    sender ID"; without it Telnyx refuses the send, for good.
    """
    if telnyx.api_version != 2 or sandbox:
        return
    for profile in profiles.values():
        if profile.alphanumeric_sender_id and not profile.telnyx_profile_id:
            problems.append(str(_error(source, _join("profiles", profile.name, "telnyx_profile_id"),
                                       "is required with alphanumeric_sender_id when api_version = 2: Telnyx's V2 API "
                                       "needs the messaging profile id to send from an alphanumeric sender ID")))  # fmt: skip


def _assign(profiles: dict[str, Profile], numbers: dict[str, NumberSettings], source: str,
            problems: list[str]) -> dict[str, Profile]:  # fmt: skip
    """Give each number at most one profile; numbers assigned by a [numbers] table join their profile's list."""
    owners: dict[str, str] = {}
    for profile in profiles.values():
        for number in profile.numbers:
            if (owner := owners.setdefault(number, profile.name)) != profile.name:
                problems.append(str(_error(source, _join("profiles", profile.name, "numbers"),
                                           f"{number} is listed by both profile {owner!r} and profile "
                                           f"{profile.name!r}; a number belongs to one profile")))  # fmt: skip
    extra: dict[str, list[str]] = {}
    for number, settings in numbers.items():
        key = _join("numbers", number, "profile")
        if settings.profile is None:
            continue
        if settings.profile not in profiles:
            known = ", ".join(map(repr, profiles)) or "none"
            problems.append(str(_error(source, key, f"names unknown profile {settings.profile!r} (known: {known})")))
            continue
        if (owner := owners.setdefault(number, settings.profile)) != settings.profile:
            rule = f"assigns {number} to profile {settings.profile!r}, but profile {owner!r} lists it"
            problems.append(str(_error(source, key, f"{rule}; a number belongs to one profile")))
            continue
        if number not in profiles[owner].numbers:
            extra.setdefault(owner, []).append(number)
    return {name: replace(p, numbers=p.numbers + tuple(extra.get(name, ()))) for name, p in profiles.items()}
