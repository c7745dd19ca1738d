"""A load generator light enough not to be the bottleneck: raw HTTP/1.1 over keep-alive sockets.

An httpx client spends more CPU per request than the server under test, so on two cores it
would measure itself. This one writes pre-signed request bytes and reads each answer by its
Content-Length. It runs in a process of its own (see :func:`run_in_process`).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass

from bot_core.webhooks import sign_v1


@dataclass(frozen=True)
class Plan:
    """What to send: ``count`` V1 inbound webhooks from ``senders`` customers, tagged ``b<i>``."""

    port: int
    secret: str
    to: str
    senders: list[str]
    count: int
    concurrency: int = 32
    rate: float = 0.0  # 0: closed loop, as fast as the server answers
    path: str = "/webhooks/telnyx"
    prefix: str = "b"


@dataclass(frozen=True)
class Result:
    """Per request: the wall-clock time it was due (or sent), its latency in seconds, its status."""

    due: list[float]
    latency: list[float]
    status: list[int]
    started: float
    finished: float


def requests(plan: Plan) -> Iterator[bytes]:
    """Signed webhooks, round-robin over the senders, so conversations interleave."""
    now = int(time.time())
    head = f"POST {plan.path} HTTP/1.1\r\nhost: 127.0.0.1:{plan.port}\r\ncontent-type: application/json\r\n"
    for i in range(plan.count):
        body = json.dumps({"sms_id": f"{plan.prefix}-{i}", "direction": "inbound", "to": plan.to,
                           "from": plan.senders[i % len(plan.senders)], "body": f"{plan.prefix}{i}"}).encode()  # fmt: skip
        signature = sign_v1(body, plan.secret, now)
        yield (head + f"x-telnyx-signature: {signature}\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    start = lower.find(b"content-length:")
    length = int(lower[start + 15 : lower.find(b"\r\n", start)]) if start >= 0 else 0
    if length:
        await reader.readexactly(length)
    return status


async def _run(plan: Plan) -> Result:
    prepared = list(requests(plan))
    n = len(prepared)
    due, latency, status = [0.0] * n, [0.0] * n, [0] * n
    connections = [await asyncio.open_connection("127.0.0.1", plan.port) for _ in range(plan.concurrency)]
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    counter = iter(range(n))
    started = time.time()
    perf0 = time.perf_counter()

    async def closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in counter:
            t0 = time.perf_counter()
            status[i] = await _exchange(reader, writer, prepared[i])
            latency[i] = time.perf_counter() - t0
            due[i] = started + (t0 - perf0)

    async def opened(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Latency counts from when the request was due, so a stalled server cannot hide its
        # queue by slowing the generator down (coordinated omission).
        while (i := await queue.get()) is not None:
            status[i] = await _exchange(reader, writer, prepared[i])
            latency[i] = time.perf_counter() - perf0 - i / plan.rate
            due[i] = started + i / plan.rate

    async def produce() -> None:
        for i in range(n):
            delay = perf0 + i / plan.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait(i)
        for _ in connections:
            queue.put_nowait(None)

    worker = opened if plan.rate else closed
    tasks = [worker(r, w) for r, w in connections]
    if plan.rate:
        tasks.append(produce())
    await asyncio.gather(*tasks)
    finished = time.time()
    for _, writer in connections:
        writer.close()
    return Result(due, latency, status, started, finished)


def _child(plan: Plan, pipe) -> None:
    pipe.send(asyncio.run(_run(plan)))
    pipe.close()


def run_in_process(plan: Plan) -> Result:
    """Run ``plan`` in a fresh process and return what it measured."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_child, args=(plan, child))
    process.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        raise RuntimeError("the load generator died; see its output above") from None
    process.join()
    return result
