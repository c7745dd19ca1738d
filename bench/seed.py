"""Fill a bot database with history: handled inbound and delivered outbound MDRs, conversations."""

from __future__ import annotations

import json
import random
from pathlib import Path

from bot_core.store import Store, iso

OUR_NUMBER = "+13125550100"


def customer(i: int) -> str:
    """The i-th customer's number (all valid, distinct E.164 numbers)."""
    return f"+1312{2_000_000 + i:07d}"


def seed(database: Path, mdrs: int, conversations: int, *, start: float = 1.7e9) -> None:
    """Write ``mdrs`` MDRs (half in, half out) spread over ``conversations`` conversations."""
    store = Store(database)
    rng = random.Random(1)
    conn = store.conn
    with store.transaction():
        conn.executemany(
            "INSERT INTO conversations (id, profile, our_number, their_number, state, created_at, updated_at)"
            " VALUES (?, 'bench', ?, ?, ?, ?, ?)",
            ((i + 1, OUR_NUMBER, customer(i), json.dumps({"n": rng.randrange(100)}), iso(start), iso(start))
             for i in range(conversations)),
        )  # fmt: skip

        def rows():
            for i in range(mdrs):
                conversation = rng.randrange(conversations)
                at = iso(start + i * 0.05)
                if i % 2 == 0:
                    yield ("inbound", customer(conversation), OUR_NUMBER, f"hello {i}", "handled", None,
                           f"seed-in-{i}", conversation + 1, "echo", at)  # fmt: skip
                else:
                    yield ("outbound", OUR_NUMBER, customer(conversation), f"echo hello {i - 1}", "delivered",
                           i, f"seed-out-{i}", conversation + 1, None, at)  # fmt: skip

        conn.executemany(
            "INSERT INTO mdrs (direction, from_number, to_number, text, status, in_reply_to, telnyx_id,"
            " conversation_id, claimed_by, profile, parts, encoding, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'bench', 1, 'GSM-7', ?, ?)",
            (row + (row[-1],) for row in rows()),
        )
    store.close()
