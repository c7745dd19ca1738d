"""optout: STOP / START / HELP compliance. On by default and always first in line.

A sender who texts an opt-out word (the whole message: STOP, STOPALL, UNSUBSCRIBE, CANCEL, END,
QUIT, REVOKE, OPTOUT or OPT OUT, in any case, punctuation ignored) is opted out of the profile
and gets one confirmation. From then on this plugin claims everything they send, so no other
plugin sees it, and the outbox blocks every message to them (status ``blocked``) until they
text START, UNSTOP or YES. HELP and INFO are answered whether or not the sender opted out.
Every change is written to the consent log with the message that caused it.

Settings (``[profiles.NAME.plugin_config.optout]``, all optional): ``help_text``,
``stop_text``, ``start_text``, and ``enabled = false`` to turn the plugin off (``bot-core
check`` warns when it is).

REVOKE and OPT OUT are there because the FCC's 2024 TCPA rule lists them among the words that
revoke consent; the others are the CTIA's.
"""

from __future__ import annotations

from typing import Any

from bot_core import Reply, hookimpl, normalize_keyword

OPT_OUT = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "OPT OUT")
OPT_IN = ("START", "UNSTOP", "YES")
HELP = ("HELP", "INFO")

DEFAULTS = {
    "help_text": "Reply STOP to unsubscribe or START to resubscribe. Msg & data rates may apply.",
    "stop_text": "You are unsubscribed and will get no more messages. Reply START to resubscribe.",
    "start_text": "You are subscribed again. Reply STOP to unsubscribe.",
}


@hookimpl
def check_config(config: dict[str, Any]) -> dict[str, str]:
    problems = {}
    for key, value in config.items():
        if key not in DEFAULTS:
            problems[key] = f"unknown setting (known: enabled, {', '.join(DEFAULTS)})"
        elif not (isinstance(value, str) and value.strip()):
            problems[key] = "must be a non-empty string: carriers require this answer"
    return problems


@hookimpl
def register_keywords() -> list[tuple[str, str]]:
    return [(word, "opt-out compliance") for word in OPT_OUT + OPT_IN + HELP]


@hookimpl
def handle_message(bot, message, conversation, config) -> Any:
    word = normalize_keyword(message.text)
    profile, sender = message.profile, message.from_number
    # What this conversation was last told is committed with the reply, so a STOP handled
    # again after a crash is still confirmed once, and a repeated STOP is not re-confirmed.
    told = conversation.state.get("optout", {}).get("told")
    if word in OPT_OUT:
        changed = bot.opt_out(profile, sender, f"texted {word} (message {message.id})")
        if not changed and told == "out":
            return []
        conversation.state["optout"] = {"told": "out"}
        return Reply(_text(config, "stop_text"), ignore_optout=True)
    if word in HELP:
        return Reply(_text(config, "help_text"), ignore_optout=True)
    if not bot.is_opted_out(profile, sender):
        return None  # START and the rest are ordinary messages for someone opted in
    if word not in OPT_IN:
        return []  # claimed: no other plugin may answer someone who opted out
    bot.opt_in(profile, sender, f"texted {word} (message {message.id})")
    conversation.state["optout"] = {"told": "in"}
    return Reply(_text(config, "start_text"))


def _text(config: dict[str, Any], key: str) -> str:
    return config.get(key) or DEFAULTS[key]
