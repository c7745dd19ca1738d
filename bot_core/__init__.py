"""bot-core: a pluggable chatbot framework for inbound SMS on the Telnyx messaging API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import BotError, ConfigError, PluginError, SendError, SettingsError, SignatureError, WebhookError
from .hookspecs import hookimpl, hookspec
from .keywords import match_keyword, normalize_keyword
from .lazy import lazy_names
from .messages import Conversation, DeliveryStatus, InboundMessage, Media, Reply

if TYPE_CHECKING:
    from .bot import Bot
    from .config import Config, load_config, parse_duration
    from .timers import Timer

# These pull in the server stack (Starlette, httpx, sqlite-utils, asyncio): a plugin module's
# ``from bot_core import hookimpl`` must not pay for them, so they load on first use.
__getattr__ = lazy_names(
    __name__,
    {
        "Bot": ".bot",
        "Config": ".config",
        "Timer": ".timers",
        "load_config": ".config",
        "parse_duration": ".config",
    },
)

__all__ = [
    "Bot",
    "BotError",
    "Config",
    "ConfigError",
    "Conversation",
    "DeliveryStatus",
    "InboundMessage",
    "Media",
    "PluginError",
    "Reply",
    "SendError",
    "SettingsError",
    "SignatureError",
    "Timer",
    "WebhookError",
    "hookimpl",
    "hookspec",
    "load_config",
    "match_keyword",
    "normalize_keyword",
    "parse_duration",
]
