"""The floor: a bare Starlette endpoint that parses the JSON and inserts it into SQLite.

One transaction per request, keyed by the message id (any inbox that dedupes needs that
index), with the same SQLite settings and the same uvicorn settings as ``bot-core serve``.
No framework can acknowledge a stored webhook faster on the same stack.
"""

from __future__ import annotations

import argparse
import json
import sqlite3

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def create_app(database: str) -> Starlette:
    conn = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS inbox (id INTEGER PRIMARY KEY, sms_id TEXT UNIQUE,"
                 " from_number TEXT, to_number TEXT, body TEXT)")  # fmt: skip

    async def webhook(request: Request) -> Response:
        document = json.loads(await request.body())
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT OR IGNORE INTO inbox (sms_id, from_number, to_number, body) VALUES (?, ?, ?, ?)",
            (document["sms_id"], document["from"], document["to"], document["body"]),
        )
        conn.execute("COMMIT")
        return JSONResponse({"ok": True})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/webhooks/telnyx", webhook, methods=["POST"]),
                             Route("/healthz", healthz)])  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.database), host="127.0.0.1", port=args.port, log_config=None, access_log=False)
