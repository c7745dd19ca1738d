"""bot-core: a pluggable chatbot framework for inbound SMS on the Telnyx messaging API."""

from .bot import Bot
from .config import Config, load_config, parse_duration
from .errors import BotError, ConfigError, PluginError, SendError, SettingsError, SignatureError, WebhookError
from .hookspecs import hookimpl, hookspec
from .keywords import match_keyword, normalize_keyword
from .messages import Conversation, DeliveryStatus, InboundMessage, Media, Reply
from .timers import Timer

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
