"""The plugin effects of the unit being handled, held back until its outcome is committed.

While bot-core calls plugins for a message, a timer or a delivery status, ``bot.send``,
``bot.schedule``, ``bot.cancel_timers`` and opt-in/out add to the unit's :class:`Effects`
(found through a context variable, so concurrent units never mix) instead of writing. The
unit's finish writes them with its state and replies in one transaction, or drops them all
when a plugin fails: a plugin that sends, schedules and then raises leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from .store import ConsentEffect, Effect, SendEffect

if TYPE_CHECKING:
    from .store import Store

_current: ContextVar[Effects | None] = ContextVar("bot_core_effects", default=None)


class Effects:
    """Effects made so far by the plugins called for one unit, in the order they were made."""

    def __init__(self, store: Store, consent: dict[tuple[str | None, str], bool] | None = None) -> None:
        self.store = store
        # Stored opt-out records read for this unit, (profile, number) -> opted out (profile None:
        # account-wide): read once per unit, usually with its conversation (store.Context). The
        # sender checks again before each send, so an opt-out stored meanwhile still blocks it.
        self.consent = dict(consent or {})
        self.items: list[tuple[str | None, Effect]] = []
        self.plugin: str | None = None  # the plugin being called
        self.open = True

    def add(self, effect: Effect) -> None:
        self.items.append((self.plugin, effect))

    @property
    def effects(self) -> list[Effect]:
        return [effect for _, effect in self.items]

    def sends(self) -> list[tuple[str | None, SendEffect]]:
        return [(plugin, e) for plugin, e in self.items if isinstance(e, SendEffect)]

    def record(self, profile: str | None, number: str) -> bool:
        """The consent record of ``profile`` (None: account-wide) as this unit will leave it."""
        for _, effect in reversed(self.items):
            if isinstance(effect, ConsentEffect) and (effect.profile, effect.number) == (profile, number):
                return effect.opted_out
        if (profile, number) not in self.consent:
            own, account = self.store.consent_records(profile, number)  # both in one read
            self.consent[(None, number)] = account
            self.consent[(profile, number)] = own
        return self.consent[(profile, number)]

    def opted_out(self, profile: str | None, number: str) -> bool:
        """Opt-out state as this unit will leave it: its own consent changes over the stored ones
        (an account-wide opt-out covers every profile)."""
        return self.record(profile, number) or self.record(None, number)


def current() -> Effects | None:
    """The effects of the unit whose plugin is running in this task, if any."""
    effects = _current.get()
    return effects if effects is not None and effects.open else None


@contextmanager
def collecting(store: Store, consent: dict[tuple[str | None, str], bool] | None = None) -> Iterator[Effects]:
    """Collect the effects of plugin calls made inside the block; closed when it ends, so a task
    a plugin left running writes its later effects directly. ``consent``: see :class:`Effects`."""
    effects = Effects(store, consent)
    token = _current.set(effects)
    try:
        yield effects
    finally:
        effects.open = False
        _current.reset(token)
