"""flows: keyword-triggered, multi-step conversations that collect answers.

A flow starts when a message matches its ``trigger`` (the whole message or its first word,
see ``bot_core.match_keyword``), asks each step's question in turn, checks each answer
(``regex``, ``choices`` or ``type = "number" | "date"``) and asks again with ``retry`` when it
does not fit, then sends ``done`` filled in with the answers (``{name}``), records the answers
in the plugin's store (``bot.plugin_store("flows")``) and, with ``post_to``, POSTs them as JSON (not in sandbox mode).
While a flow is active every message of the conversation goes to it (other triggers do not
hijack it) except the opt-out words, which the ``optout`` plugin sees first. Texting the
``exit_word`` (the whole message, default EXIT) leaves it; ``expire_after`` idle time
(default 1h) ends it with the optional ``expiry_message``. The flow's place lives in
``conversation.state["flows"]`` and its expiry is a timer, so both survive restarts.

List it before the plugins that would claim a flow's answers (``plugins = ["flows",
"autoresponder"]``): the answers of an active flow must reach it first.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from bot_core import hookimpl, match_keyword, normalize_keyword

from .delivery import POST_TIMEOUT, Poster
from .settings import Flow, parse, render

TIMER = "expire"
POST = "post"  # a delivery attempt of a submission to post_to
_posters: WeakKeyDictionary[Any, Poster] = WeakKeyDictionary()


@hookimpl
def check_config(config: dict[str, Any]) -> None:
    parse(config)  # raises SettingsError listing every problem


@hookimpl
def register_keywords(config: dict[str, Any]) -> list[tuple[str, str]]:
    flows = parse(config).values()
    claims = [(flow.trigger, f"trigger of flow {flow.name!r}") for flow in flows]
    exits: dict[str, list[str]] = {}  # flows may share an exit word (EXIT, by default)
    for flow in flows:
        exits.setdefault(normalize_keyword(flow.exit_word), []).append(repr(flow.name))
    claims += [(word, f"exit_word of flow{'s' if len(names) > 1 else ''} {', '.join(names)}")
               for word, names in exits.items()]  # fmt: skip
    return claims


@hookimpl
def startup(bot) -> None:
    # A POST that times out must fail inside the handler's plugin_timeout, so its retry is scheduled.
    timeout = bot.config.bot.plugin_timeout
    poster = Poster(bot.plugin_store("flows"), bot.clock, sandbox=bot.config.bot.sandbox,
                    timeout=min(POST_TIMEOUT, timeout / 2) if timeout else POST_TIMEOUT)  # fmt: skip
    poster.start()
    _posters[bot] = poster


@hookimpl
async def shutdown(bot) -> None:
    poster = _posters.pop(bot, None)
    if poster is not None:
        await poster.close()


@hookimpl
def handle_message(bot, message, conversation, config) -> Any:
    flows = parse(config)
    state = conversation.state.get("flows")
    expired = None
    if state is not None:
        flow = flows.get(state["flow"])
        if flow is None or state["step"] >= len(flow.steps):  # the flow was changed since it started
            _end(bot, conversation)
        elif bot.clock() >= state["expires_at"]:  # texted before the expiry timer fired
            _end(bot, conversation)
            expired = flow
        else:
            return _answer(bot, message, conversation, flow, state)
    trigger = match_keyword(message.text, [f.trigger for f in flows.values()])
    if trigger is not None:
        flow = next(f for f in flows.values() if f.trigger == trigger)
        conversation.state["flows"] = {"flow": flow.name, "step": 0, "answers": {}, "run": message.id}
        _touch(bot, conversation, flow)
        return render(flow.steps[0].ask, {})
    if expired is not None and expired.expiry_message:
        return expired.expiry_message
    return None


@hookimpl
async def handle_timer(bot, timer, conversation, config) -> Any:
    if timer.name == POST:
        delay = await _posters[bot].attempt(timer.payload["submission"])
        if delay is not None:
            bot.schedule(conversation, delay=delay, plugin="flows", name=POST, payload=timer.payload)
        return None
    state = conversation.state.get("flows")
    if timer.name != TIMER or not state or state["run"] != timer.payload.get("run"):
        return None  # a timer of a flow that already ended
    if bot.clock() < state["expires_at"]:
        return None
    conversation.state.pop("flows")
    flow = parse(config).get(state["flow"])
    return flow.expiry_message if flow is not None and flow.expiry_message else None


def _answer(bot, message, conversation, flow: Flow, state: dict[str, Any]) -> str:
    if normalize_keyword(message.text) == normalize_keyword(flow.exit_word):
        _end(bot, conversation)
        return flow.exit_message
    step = flow.steps[state["step"]]
    answers = state["answers"]
    valid, value = step.check(message.text)
    if not valid:
        _touch(bot, conversation, flow)  # a wrong answer is activity too
        return render(step.retry_text(), answers)
    answers[step.save_as] = value
    state["step"] += 1
    if state["step"] < len(flow.steps):
        _touch(bot, conversation, flow)
        return render(flow.steps[state["step"]].ask, answers)
    _end(bot, conversation)
    submission, deliver = _posters[bot].record(
        message_id=message.id, conversation_id=conversation.id, flow=flow, profile=message.profile,
        from_number=message.from_number, to_number=message.to_number, answers=answers,
    )  # fmt: skip
    if deliver:  # committed with this message's outcome: a durable unit of work from then on
        bot.schedule(conversation, delay=0, plugin="flows", name=POST, payload={"submission": submission})
    return render(flow.done, answers)


def _touch(bot, conversation, flow: Flow) -> None:
    """(Re)start the idle clock: the flow expires ``expire_after`` from now."""
    state = conversation.state["flows"]
    state["expires_at"] = bot.clock() + flow.expire_after
    bot.cancel_timers(conversation, plugin="flows", name=TIMER)
    bot.schedule(conversation, at=state["expires_at"], plugin="flows", name=TIMER, payload={"run": state["run"]})


def _end(bot, conversation) -> None:
    conversation.state.pop("flows", None)
    bot.cancel_timers(conversation, plugin="flows", name=TIMER)
