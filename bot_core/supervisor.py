"""Serving a bot: the listening socket, and one or several worker processes serving its port.

``bot-core serve`` binds its socket before any bot starts, so that a port in use is an error at
once, never after "started". With one worker the bot runs in the serve process itself. With
``--workers N`` a :class:`Supervisor` starts N worker processes (any worker may acknowledge any
webhook). On Linux the serve process binds the port with SO_REUSEPORT without listening, and each
worker listens on a socket of its own bound to that port: the kernel spreads new connections over
the workers by a hash of their addresses. One socket shared by all workers would let a worker
whose event loop wakes first accept a whole burst of keep-alive connections (libuv accepts until
the queue is empty), leaving the others idle. Elsewhere the workers share one socket. Each builds
its own :class:`~bot_core.bot.Bot` from the same config and they share the SQLite database. A
worker that dies is replaced; SIGTERM or SIGINT is passed on to every worker, which drains
within ``shutdown_grace``, and a worker still running a few seconds after that is killed.

uvicorn's own ``--workers`` would import the app by name in each child (a bot-core app needs a
config) and waits for a stuck child forever when stopping; this supervisor does neither.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import uvicorn

from .asgi import create_app
from .bot import Bot
from .config import Config
from .logs import setup_logging

log = logging.getLogger("bot_core.supervisor")

KILL_AFTER = 5.0  # seconds past shutdown_grace before a worker still running is killed
STARTUP_FAILURE = 3  # a worker's exit code when the bot could not start (uvicorn's own code)
RESTART_BACKOFF = (0.5, 30.0)  # first and longest wait before replacing a worker that died young
YOUNG = 5.0  # a worker that dies sooner than this after starting is replaced after a backoff


# Linux spreads the connections to one port over the sockets bound to it with SO_REUSEPORT, by a
# hash of each connection's addresses; BSD and macOS accept the option but hand every connection to
# one socket, so there the workers keep sharing one.
REUSE_PORT = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port``; raises OSError (in use, not allowed) at once."""
    sock = _bind(_family(host), (host, port), reuse_port=False)
    try:
        sock.listen(2048)  # uvicorn's default backlog
    except OSError:
        sock.close()
        raise
    return sock


def reserve(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` with SO_REUSEPORT, not listening: raises OSError (in
    use, not allowed) at once, then holds the port for the workers, which bind it too and listen.

    A bound socket that does not listen is given no connection, and any other socket's bind to
    the port fails, unless it sets SO_REUSEPORT too and runs as the same user (Linux's rule).
    """
    return _bind(_family(host), (host, port), reuse_port=True)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind(family: socket.AddressFamily, address: tuple[str | int, ...], *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Lets a restarted server bind while its old connections linger in TIME_WAIT; on Linux it
        # still refuses a port another socket is listening on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def raise_open_files_limit() -> None:
    """Raise the soft open-files limit to the hard one, and log both.

    Every webhook connection, send and SQLite file holds a descriptor; the usual soft default
    (1024) is what a burst of connections runs into first, the hard limit is what the operator
    allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # macOS refuses an unlimited soft limit
            log.warning("cannot raise the open files limit from %s to %s: %s", _limit(soft), _limit(hard), exc)
    log.info("open files limit: soft %s (was %s), hard %s", _limit(soft), _limit(before), _limit(hard))


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def serve(bot: Bot, sock: socket.socket, on_started: Callable[[], None] | None = None) -> None:
    """Serve ``bot`` on ``sock`` in this process until SIGTERM or SIGINT (uvicorn's handlers);
    ``on_started`` is called once the bot has started and connections are being accepted."""
    config = uvicorn.Config(create_app(bot), log_config=None, access_log=False,
                            timeout_graceful_shutdown=max(1, int(bot.config.bot.shutdown_grace)))  # fmt: skip
    # loop and http are "auto": uvloop and httptools when installed (uvicorn[standard]).
    config.load()
    loop = config.get_loop_factory()
    host, port = sock.getsockname()[:2]
    # uvicorn logs this line itself only when it binds the socket; the same words, for who greps them.
    log.info("Uvicorn running on http://%s:%d (pid %d; uvicorn %s, %s, %s)", host, port, os.getpid(),
             uvicorn.__version__, "uvloop" if loop and loop.__module__.startswith("uvloop") else "asyncio",
             "httptools" if "httptools" in config.http_protocol_class.__module__ else "h11")  # fmt: skip
    threading.Thread(target=_exit_after_grace, args=(bot,), name="bot-core-exit-watchdog", daemon=True).start()
    _Server(config, on_started).run(sockets=[sock])


def _exit_after_grace(bot: Bot) -> None:
    """Exit within ``shutdown_grace`` + 4 s of the stop, whatever a plugin does: a hook that
    ignores its cancellation, or blocks the event loop, must not keep the process alive."""
    bot.stopping.wait()
    time.sleep(bot.config.bot.shutdown_grace + 4)
    logging.getLogger("bot_core").error("still stopping %gs past shutdown_grace: exiting now", 4)
    os._exit(1)


class _Server(uvicorn.Server):
    """uvicorn's server, saying when its start-up (the bot's included) is over."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)  # exits the process when the bot cannot start
        if self._on_started is not None and not self.should_exit:
            self._on_started()


def _worker_main(config: Config, sock: socket.socket, index: int, ready: Connection) -> None:
    """A worker process: its own logging and Bot, serving the supervisor's socket, or with a
    port from :func:`reserve` a socket of its own bound to that port."""
    # A forked worker inherits the supervisor's signal handling; uvicorn installs its own.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    setup_logging(config.bot.log_format, secrets=config.secrets())
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(index))
    _stop_with_parent()

    def started() -> None:
        ready.send_bytes(b"started")
        ready.close()

    if _reserved(sock):
        own = _bind(sock.family, sock.getsockname(), reuse_port=True)
        sock.close()
        sock = own  # not listening yet: uvicorn listens once the bot has started, so no connection waits on it
    serve(Bot(config), sock, started)


def _reserved(sock: socket.socket) -> bool:
    """Whether ``sock`` is a port from :func:`reserve` (bound with SO_REUSEPORT), not a listener to share."""
    return REUSE_PORT and bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))


class _WorkerTag(logging.Filter):
    """Adds ``worker=N`` to each log line, so that interleaved lines tell whose they are."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def _stop_with_parent() -> None:
    """Drain and exit (SIGTERM to ourselves) if the supervisor dies, even by kill -9."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    started: float
    ready: Connection  # says "started" once the worker's bot has started


class Supervisor:
    """Runs ``workers`` processes serving one port; replaces those that die; stops them all."""

    def __init__(self, config: Config, sock: socket.socket, workers: int) -> None:
        self.config = config
        self.sock = sock
        self.count = workers
        # fork on Linux: a worker starts in milliseconds, with bot-core and the plugins already
        # imported (a spawned one imports them again: seconds on a busy machine, each restart).
        # The supervisor runs no thread and holds no connection when it forks. macOS's system
        # libraries are not fork-safe, so elsewhere a worker is spawned.
        self._context = (
            multiprocessing.get_context("fork") if sys.platform == "linux" else multiprocessing.get_context("spawn")
        )
        self._workers: dict[int, _Worker] = {}
        self._due: dict[int, float] = {}  # worker index -> when to start its replacement
        self._backoff: dict[int, float] = {}
        self._signal: int | None = None

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit code (0, or 3 if a worker cannot start)."""
        wakeup, wakeup_writer = socket.socketpair()
        wakeup_writer.setblocking(False)
        previous_fd = signal.set_wakeup_fd(wakeup_writer.fileno())
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        host, port = self.sock.getsockname()[:2]
        log.info("Uvicorn running on http://%s:%d with %d worker processes (supervisor pid %d)", host, port, self.count,
                 os.getpid())  # fmt: skip
        code = 0
        try:
            # The first worker starts alone: it migrates the database and runs the plugins'
            # startup hooks (which may create tables) before the others race it there.
            self._start(1)
            self._await_started(self._workers[1], wakeup)
            self._due.update((index, time.monotonic()) for index in range(2, self.count + 1))
            while self._signal is None and code == 0:
                timeout = max(0.0, min(self._due.values()) - time.monotonic()) if self._due else None
                ready = wait([w.process.sentinel for w in self._workers.values()] + [wakeup], timeout)
                if wakeup in ready:
                    wakeup.recv(4096)
                if self._signal is None and (code := self._reap()) == 0:
                    self._restart_due()
            self._stop_all(signal.Signals(self._signal).name if self._signal else "a worker could not start")
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wakeup.close()
            wakeup_writer.close()
        return code

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signal = signum

    def _start(self, index: int) -> None:
        ready, tell = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_worker_main, args=(self.config, self.sock, index, tell),
                                        name=f"bot-core worker {index}")  # fmt: skip
        process.start()
        tell.close()  # the worker's end: reading ours gives EOF if it dies before it says started
        self._workers[index] = _Worker(index, process, time.monotonic(), ready)
        log.info("worker %d started (pid %d)", index, process.pid)

    def _await_started(self, worker: _Worker, wakeup: socket.socket) -> None:
        """Wait until ``worker``'s bot has started, it died, or a signal came."""
        while self._signal is None:
            if wakeup in wait([worker.ready, worker.process.sentinel, wakeup]):
                wakeup.recv(4096)
            if worker.ready.poll() or not worker.process.is_alive():
                return

    def _reap(self) -> int:
        """Note the workers that exited and when to replace them; 3 if one could not start."""
        for index, worker in list(self._workers.items()):
            process = worker.process
            if process.is_alive():
                continue
            process.join()
            worker.ready.close()
            del self._workers[index]
            if process.exitcode == STARTUP_FAILURE:
                log.error("worker %d (pid %d) could not start the bot; stopping", index, process.pid)
                return STARTUP_FAILURE
            lived = time.monotonic() - worker.started
            delay = 0.0
            if lived < YOUNG:  # dying again and again: do not spin
                first, longest = RESTART_BACKOFF
                delay = self._backoff[index] = min(longest, self._backoff.get(index, first / 2) * 2)
            else:
                self._backoff.pop(index, None)
            log.warning("worker %d (pid %d) %s after %.1f s; starting another%s", index, process.pid,
                        _exit_reason(process.exitcode), lived, f" in {delay:g} s" if delay else "")  # fmt: skip
            self._due[index] = time.monotonic() + delay
        return 0

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, due in list(self._due.items()):
            if due <= now:
                del self._due[index]
                self._start(index)

    def _stop_all(self, reason: str) -> None:
        """SIGTERM every worker; kill those still running ``KILL_AFTER`` s past the grace."""
        limit = self.config.bot.shutdown_grace + KILL_AFTER
        log.info("%s: stopping %d worker(s), waiting up to %.0f s", reason, len(self._workers), limit)
        for worker in self._workers.values():
            if worker.process.is_alive() and worker.process.pid is not None:  # alive: started, so it has a pid
                os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + limit
        running = [w.process for w in self._workers.values()]
        while running and (left := deadline - time.monotonic()) > 0:
            wait([p.sentinel for p in running], left)
            running = [p for p in running if p.is_alive()]
        for process in running:
            log.error("worker pid %d did not stop within %.0f s; killing it", process.pid, limit)
            process.kill()
        for worker in self._workers.values():
            worker.process.join()
            worker.ready.close()
        log.info("all workers stopped")


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
