"""The exception tree of bot-core.

Every error bot-core raises on purpose descends from :class:`BotError`::

    BotError
    ├── ConfigError          bot.toml is malformed or breaks a rule (names file, key and rule)
    ├── WebhookError         a webhook was refused; carries the HTTP status and a reason
    │   ├── SignatureError   missing or bad signature (401)
    │   └── ForeignStatusError  a V1 status signed by a profile that did not send the message (403)
    ├── SettingsError        a plugin's check_config found problems in its own settings
    ├── PluginError          a plugin raised or timed out while handling a message
    └── SendError            Telnyx refused or failed a send; says whether to retry
"""

from __future__ import annotations


class BotError(Exception):
    """Base class of every error bot-core raises on purpose."""


class ConfigError(BotError):
    """The configuration is invalid; the message names the file, the key and the rule."""


class WebhookError(BotError):
    """A webhook request is refused with ``status`` and a human-readable reason."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class SignatureError(WebhookError):
    """The webhook signature is missing, malformed, stale or wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=401)


class ForeignStatusError(WebhookError):
    """A V1 delivery status names a message another profile sent: its secret cannot vouch for it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status=403)


class SettingsError(BotError):
    """A plugin's settings are wrong; ``problems`` maps each key (relative to its table) to the rule.

    A plugin's ``check_config`` may raise it from the same parser it uses at run time instead
    of returning the problems; bot-core reports both the same way.
    """

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{key}: {rule}" for key, rule in problems.items()))
        self.problems = problems


class PluginError(BotError):
    """A plugin failed while handling a message; ``plugin`` names it."""

    def __init__(self, plugin: str, reason: str) -> None:
        super().__init__(f"plugin {plugin!r} failed: {reason}")
        self.plugin = plugin
        self.reason = reason


class SendError(BotError):
    """Telnyx did not accept a message.

    ``retryable`` is true for 429, 5xx, connect errors and timeouts; ``opted_out`` is true when
    Telnyx refused because the recipient texted STOP (code 40300), which is final.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retryable: bool = False,
        opted_out: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.code = code
        self.retryable = retryable
        self.opted_out = opted_out
        self.retry_after = retry_after
