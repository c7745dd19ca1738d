"""optout: STOP / START / HELP compliance, as Telnyx applies it. On by default and always first.

A sender who texts an opt-out word (the whole message: STOP, STOP ALL, STOPALL, UNSUBSCRIBE,
CANCEL, END, QUIT, REVOKE, OPTOUT or OPT OUT, in any case, punctuation ignored) is opted out
and, unless ``confirm = false``, gets one confirmation. From then on this plugin claims
everything they send, so no other plugin sees it, and the outbox blocks every message to them
(status ``blocked``) until they text START or UNSTOP, which lifts both their account-wide opt-out
and the one for the profile they texted. HELP and INFO are answered whether or not
the sender opted out. Every change is written to the consent log with the message that caused it.

Telnyx applies the same words itself (its own opt-out handling, on unless the account turned
it off): it blocks a sender who texted STOP or STOP ALL from then on (a send is refused
with code 40300) and lifts the block only on START or UNSTOP, not on YES. So YES does not
re-subscribe here either: bot-core would claim a re-subscription that Telnyx refuses to deliver.

Settings (``[profiles.NAME.plugin_config.optout]``, all optional):

- ``scope``: ``"account"`` (the default, as Telnyx's opt-outs are account-wide: a STOP to one
  number stops every profile's messages) or ``"profile"`` (only the profile texted);
- ``confirm``: whether bot-core sends its own STOP and START confirmations (default true).
  Telnyx sends its own unless the account turned its opt-out handling off: set ``false`` then
  to avoid a second confirmation (Telnyx refuses bot-core's STOP confirmation anyway, 40300);
- ``help_text``, ``stop_text``, ``start_text``; and ``enabled = false`` to turn the plugin off
  (``bot-core check`` warns when it is).

REVOKE and OPT OUT are there because the FCC's 2024 TCPA rule lists them among the words that
revoke consent; the others are the CTIA's and Telnyx's.
"""

from __future__ import annotations

from typing import Any

from bot_core import Reply, hookimpl, normalize_keyword

OPT_OUT = ("STOP", "STOP ALL", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "OPT OUT")
OPT_IN = ("START", "UNSTOP")  # the words on which Telnyx lifts its block
HELP = ("HELP", "INFO")

DEFAULTS = {
    "help_text": "Reply STOP to unsubscribe or START to resubscribe. Msg & data rates may apply.",
    "stop_text": "You are unsubscribed and will get no more messages. Reply START to resubscribe.",
    "start_text": "You are subscribed again. Reply STOP to unsubscribe.",
}
SCOPES = ("account", "profile")


@hookimpl
def check_config(config: dict[str, Any]) -> dict[str, str]:
    problems = {}
    for key, value in config.items():
        if key == "scope":
            if value not in SCOPES:
                problems[key] = f"must be {' or '.join(map(repr, SCOPES))}, not {value!r}"
        elif key == "confirm":
            if not isinstance(value, bool):
                problems[key] = "must be true or false"
        elif key not in DEFAULTS:
            problems[key] = f"unknown setting (known: enabled, scope, confirm, {', '.join(DEFAULTS)})"
        elif not (isinstance(value, str) and value.strip()):
            problems[key] = "must be a non-empty string: carriers require this answer"
    return problems


@hookimpl
def register_keywords() -> list[tuple[str, str]]:
    return [(word, "opt-out compliance") for word in OPT_OUT + OPT_IN + HELP]


@hookimpl
def handle_message(bot, message, conversation, config) -> Any:
    word = normalize_keyword(message.text)
    sender = message.from_number
    scope = None if config.get("scope", "account") == "account" else message.profile  # None: account-wide
    confirm = config.get("confirm", True)
    # What this conversation was last told is committed with the reply, so a STOP handled
    # again after a crash is still confirmed once, and a repeated STOP is not re-confirmed.
    told = conversation.state.get("optout", {}).get("told")
    if word in OPT_OUT:
        changed = bot.opt_out(scope, sender, f"texted {word} (message {message.id})")
        if not changed and told == "out":
            return []
        conversation.state["optout"] = {"told": "out"}
        return Reply(_text(config, "stop_text"), ignore_optout=True) if confirm else []
    if word in HELP:
        return Reply(_text(config, "help_text"), ignore_optout=True)
    if not bot.is_opted_out(message.profile, sender):  # account-wide or this profile's, whoever recorded it
        return None  # START and the rest are ordinary messages for someone opted in
    if word not in OPT_IN:
        return []  # claimed: no other plugin may answer someone who opted out (YES included)
    for owner in (None, message.profile):  # as Telnyx's START lifts its block, whatever its scope
        bot.opt_in(owner, sender, f"texted {word} (message {message.id})")
    conversation.state["optout"] = {"told": "in"}
    return Reply(_text(config, "start_text")) if confirm else []


def _text(config: dict[str, Any], key: str) -> str:
    return config.get(key) or DEFAULTS[key]
