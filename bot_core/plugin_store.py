"""A plugin's own key-value data (``bot.plugin_store(name)``), on whichever engine the bot runs.

For data of a plugin that is not per conversation (per-conversation data belongs in
``conversation.state``, which is committed with the message's outcome). Values are anything
JSON can hold. Every replica on the database sees a write at once; writes take effect when
made, not with the outcome of the unit being handled, so make them idempotent: :meth:`add`
records something once, whichever replica or retry gets there first.
"""

from __future__ import annotations

import json
from typing import Any

from .store import Store


class PluginStore:
    """The key-value data of one plugin: string keys, JSON values."""

    def __init__(self, store: Store, plugin: str) -> None:
        self._store = store
        self.plugin = plugin

    def get(self, key: str, default: Any = None) -> Any:
        value = self._store.plugin_get(self.plugin, key)
        return default if value is None else json.loads(value)

    def put(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value``, replacing any value it had."""
        self._store.plugin_put(self.plugin, key, json.dumps(value))

    def add(self, key: str, value: Any) -> bool:
        """Set ``key`` only if it has no value yet; False (and no change) if it has one."""
        return self._store.plugin_put(self.plugin, key, json.dumps(value), only_new=True)

    def delete(self, key: str) -> bool:
        """Remove ``key``; False if it had no value."""
        return self._store.plugin_delete(self.plugin, key)

    def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        """Every (key, value) whose key starts with ``prefix``, ordered by key."""
        return [(key, json.loads(value)) for key, value in self._store.plugin_items(self.plugin, prefix)]
