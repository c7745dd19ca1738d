"""The hooks a bot-core plugin can implement: the plugin author's reference.

Implement a hook by writing a function with the hook's name, decorated with
``bot_core.hookimpl``, in a module registered as a plugin. An implementation may accept any
subset of the hook's arguments, by name, and may be ``def`` or ``async def``.

Calling rules, the same for every hook:

- bot-core calls implementations one at a time, in the plugin order of the message's profile
  (``plugins = [...]`` in bot.toml, with ``optout`` always first and ``fallback`` always last;
  when omitted, only ``optout`` is active), and awaits each result that is awaitable before
  calling the next. pluggy's ``wrapper`` and ``hookwrapper`` implementations are refused when
  the plugin loads: there is no chain of calls for them to wrap.
- Only plugins active on the message's profile are called for that message.
- A ``def`` implementation runs on the event loop: it must not block. Do slow work (HTTP
  calls, sleeps) in an ``async def`` implementation.
- ``config`` is the plugin's own table for the profile, ``[profiles.NAME.plugin_config.PLUGIN]``,
  with ``[numbers."+1..."].plugin_config.PLUGIN`` merged over it (an empty dict when absent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .bot import Bot
    from .messages import Conversation, DeliveryStatus, InboundMessage
    from .timers import Timer

hookspec = pluggy.HookspecMarker("bot_core")
hookimpl = pluggy.HookimplMarker("bot_core")


# -- lifecycle --------------------------------------------------------------------------------


@hookspec
def startup(bot: Bot) -> None:
    """Called once when the bot starts, after the database is open and before any message.

    Use it to check its settings or open what it needs. Every plugin's ``startup`` runs,
    whatever the profiles say. An exception here stops the bot from starting.

    A plugin's own data that is not per conversation goes in ``bot.plugin_store(name)``: a
    key-value store of JSON values (``get``, ``put``, ``add`` once-only, ``delete``, ``items``)
    that works on both engines and that every replica sees at once. Per-conversation data goes
    in ``conversation.state``. ``bot.db`` (a sqlite-utils Database, for a plugin's own tables)
    exists only on SQLite: it raises on PostgreSQL, so a plugin that uses it is SQLite-only.
    """


@hookspec
def shutdown(bot: Bot) -> None:
    """Called once when the bot stops, after the last message was handled and sent.

    Exceptions are logged and ignored, so every plugin gets its call.
    """


# -- configuration ----------------------------------------------------------------------------


@hookspec
def check_config(profile: str, config: dict[str, Any]) -> dict[str, str] | None:
    """Check the plugin's settings for one profile; return the problems as ``{key: rule}``.

    Called when the config is loaded (``bot-core check``, ``serve``, the test harness), before
    the bot starts, once per profile the plugin is active on or has a ``plugin_config`` table
    on, active or not (and once per number whose own settings change it). ``key`` is relative
    to the plugin's table (``""`` for the table itself), e.g.
    ``{"signup.steps[1].regex": "is not a valid regular expression"}``; bot-core prefixes the
    file and ``profiles.NAME.plugin_config.PLUGIN`` and refuses to start. Instead of
    returning the problems, it may raise ``bot_core.SettingsError(problems)`` (handy when the
    plugin's own settings parser raises it). Must be a plain ``def``: no bot exists yet.
    """


@hookspec
def register_keywords(profile: str, config: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The keywords the plugin answers on a profile, as ``[(KEYWORD, who claims it), ...]``.

    Called like ``check_config``. bot-core compares the keywords of every plugin active on
    the profile (normalised with ``normalize_keyword``) and refuses a config in which two
    claimants share one, naming both: e.g. ``("JOIN", "trigger of flow 'signup'")``. The
    words of ``optout`` (STOP, START, HELP, ...) are reserved: no other plugin may claim them.
    Claim the words that fire on their own (triggers, commands), and words a plugin reads
    only in a context of its own (a flow's exit word) when they must not be reserved ones.
    Match messages with ``bot_core.match_keyword`` so that a claim means what it says. Must
    be a plain ``def``.
    """


# -- inbound messages -------------------------------------------------------------------------


@hookspec
def handle_message(bot: Bot, message: InboundMessage, conversation: Conversation, config: dict[str, Any]) -> Any:
    """Claim an inbound message and return the reply.

    Return ``None`` to pass the message to the next plugin. Anything else claims it, and no
    later plugin sees it: a string (one reply), a list of strings or ``Reply`` objects (one
    message each, sent in order; an empty list claims the message with no reply), or a
    ``Reply``.

    ``conversation.state`` is a JSON-serialisable dict for this (our number, their number)
    pair: change it in place. Changes by every plugin called for the message are committed
    with the replies in one transaction, and so are the plugin effects made during the call:
    ``bot.send``, ``bot.schedule``, ``bot.cancel_timers``, ``bot.opt_out`` / ``opt_in``
    (``bot.send`` and ``bot.schedule`` return None here: the row exists once the outcome is
    committed). If the plugin raises, or runs past ``plugin_timeout``, the message is marked
    ``failed``, the state is left as it was before the message, none of those effects happen,
    and the profile's ``fallback_reply`` (if any) is sent instead. More than ``[bot]
    max_replies`` (default 10) replies and sends for one message fail it the same way, with
    nothing sent and an error naming the plugin that went over.

    Messages of one conversation are handled one at a time, in arrival order, by one process
    at a time; different conversations are handled concurrently. A message whose handling was
    cut off (a crash, a kill, a shutdown past its grace) is handled again: keep side effects
    outside bot-core idempotent.
    """


@hookspec
def handle_timer(bot: Bot, timer: Timer, conversation: Conversation, config: dict[str, Any]) -> Any:
    """A timer scheduled with ``bot.schedule(..., plugin=NAME)`` is due.

    Only the plugin that scheduled the timer is called. Returns replies exactly as
    ``handle_message`` does (``None`` or an empty list: no reply). State changes and plugin
    effects are committed with the replies, as for ``handle_message``, and ``max_replies``
    applies. Opt-outs are checked when the replies are sent, not when scheduled. A timer fires
    once however long its handler takes (it is cut off by ``plugin_timeout``), and never while
    a message of its conversation is waiting or being handled.
    """


# -- outbound messages ------------------------------------------------------------------------


@hookspec
def delivery_status(bot: Bot, status: DeliveryStatus) -> None:
    """Observe a delivery status update (V1 or V2 webhook) for a message the bot sent.

    Called for the plugins active on the sending number's profile, after the MDR was updated;
    ``status.mdr_id`` names that MDR (None when Telnyx reported on a message bot-core does not
    know). The return value is ignored; exceptions are logged and ignored (the failing plugin's
    effects are dropped). Each status is a stored unit of work: its calls happen in the order
    the statuses arrived for a (from, to) pair, ``plugin_timeout`` cuts a call off, plugin
    effects made during the calls are committed when they are done, and a call cut off by a
    crash or a shutdown past its grace is made again at the next start.
    """


# -- handoff ----------------------------------------------------------------------------------


@hookspec
def handoff(bot: Bot, conversation: Conversation, to: str, reason: str, operator: str | None) -> None:
    """Observe a conversation changing hands: ``to`` is ``"person"`` or ``"bot"``.

    Called after the change is committed, for the plugins active on the conversation's number:
    when an operator takes it over (``operator`` names them), when a plugin calls
    ``bot.handoff(conversation, reason)`` (``operator`` is None: it waits for whoever picks it
    up), when an operator hands it back, and when ``[inbox] handback_after`` passes with no
    operator reply (``operator`` None). Use it to tell a team chat or send an email. The return
    value is ignored; exceptions are logged and ignored.
    """
