"""Hint replicas: hints served by a process that does not ingest.

A worker's event loop learns and answers hints in turns, so while it ingests a hint waits for
slices, forks, collections and decoding (README, "Hint latency"). With ``PAKIT_STREAM_HINT_PORT``
set, the worker also serves the hint routes (and the codec policy) on that port from a
**replica**: at start and then every ``PAKIT_STREAM_HINT_REFRESH_S`` it forks, at a moment when
no message is half applied (:meth:`Pipeline.quiet <pakit_stream.pipeline.Pipeline.quiet>`), as
the checkpoint does. The child holds a copy-on-write image of the learners, answers hints from
it with the same :class:`~pakit_stream.serving.hints.HintService` and nothing else, and never
learns. The listening socket is made once by the worker and inherited by every replica, so a
request is never refused during a handover:

1. the new replica starts accepting and says so;
2. the worker tells the replicas forked before it to stop (``SIGTERM``): each stops accepting,
   answers what is in flight, closes each kept-alive connection after its next answer
   (``Connection: close``), and exits when none is left, or after ``DRAIN_S``. One still alive
   ``KILL_S`` after it was told is killed.

So an answer comes from an image at most one refresh old, or up to ``DRAIN_S`` older on a
connection kept alive across a handover. At most ``MAX_LIVE`` replicas live at once: the
worker skips a refresh rather than fork past that.

The child lets go of everything else it inherited: every descriptor but the socket and its
pipe is pointed at ``/dev/null`` (a connection the worker closes is closed for its client at
once), the worker's collection callbacks are dropped, and the learners' random generators
are reseeded (each replica explores on draws of its own). It counts what it answers in memory
and sends the counts to the worker every ``FLUSH_S`` over a pipe, in writes of at most
``PIPE_BUF`` bytes (atomic, so two replicas' writes never interleave); a write that does not
fit is kept and sent with the next. So the worker's ``/metrics`` count every hint, whichever
process answered it. A hint about a node another worker owns is forwarded to that worker's
hint port (:class:`~pakit_stream.routing.Forwarder`), by the group assignment of the fork. A
replica whose worker is gone exits within about half a second.

What it costs the worker: at each refresh, the wait for messages in flight and the fork
(about 7 ms per 150 MB of learners here); and each page it writes while a replica lives is
copied, so memory grows by up to the learners' size per live replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import select
import signal
import socket
import time
import traceback
from collections import defaultdict
from typing import TYPE_CHECKING

import msgspec

from pakit_stream.exceptions import DaemonError
from pakit_stream.routing import FORWARDED, Forwarder
from pakit_stream.serving.api import ROUTES
from pakit_stream.serving.hints import BadRequest, HintService

if TYPE_CHECKING:
    from pakit_stream.daemon.core import Daemon

__all__ = ["HintReplicas", "PipeMeter", "DRAIN_S", "KILL_S", "MAX_LIVE"]

log = logging.getLogger(__name__)

#: longest a stopped replica waits for its kept-alive connections to close (a client's idle
#: connection outlives it only if kept longer than httpx's default 5 s)
DRAIN_S = 5.0
#: a replica still alive this long after it was told to stop is killed
KILL_S = DRAIN_S + 3.0
#: a replica that has not said it is ready this long after its fork is killed
START_S = 30.0
#: the most replicas alive at once (one serving, the rest draining or starting)
MAX_LIVE = 4
#: how often a replica sends its counts
FLUSH_S = 0.1
_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class PipeMeter:
    """A replica's :class:`~pakit_stream.serving.hints.Meter`: it counts in memory, and
    :meth:`flush` sends the counts to the worker as lines of JSON (latencies in whole µs),
    each shorter than ``PIPE_BUF`` bytes, so that every write is atomic: all of it or, on a
    full pipe, none, kept for the next flush."""

    #: values per line: 100 numbers of at most 12 characters stay far below PIPE_BUF (4096)
    PER_LINE = 100

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._hints: defaultdict[tuple[str, str], list] = defaultdict(list)  # -> [µs | None]
        self._counts: defaultdict[tuple, int] = defaultdict(int)  # (kind, *labels) -> n
        self._lsh: list[int] = []
        self._lines: list[bytes] = []  # encoded, not yet written

    def hint(self, hint: str, source: str, seconds: float | None = None) -> None:
        self._hints[hint, source].append(None if seconds is None else round(seconds * 1e6))

    def canary(self, model: str, arm: str) -> None:
        self._counts["canary", model, arm] += 1

    def lsh_query(self, seconds: float) -> None:
        self._lsh.append(round(seconds * 1e6))

    def routed(self, outcome: str) -> None:
        self._counts["routed", outcome] += 1

    def _encode(self) -> None:
        def lines(head: tuple, values: list):
            for i in range(0, len(values), self.PER_LINE):
                yield msgspec.json.encode((*head, values[i:i + self.PER_LINE])) + b"\n"

        for (hint, source), micros in self._hints.items():
            self._lines += lines(("hint", hint, source), micros)
        self._lines += [msgspec.json.encode(("count", *key, n)) + b"\n"
                        for key, n in self._counts.items()]
        self._lines += lines(("lsh_query",), self._lsh)
        self._hints.clear()
        self._counts.clear()
        self._lsh = []

    def flush(self) -> None:
        """Send what was counted; lines the pipe has no room for wait for the next flush.
        ``BrokenPipeError``: the worker is gone."""
        self._encode()
        while self._lines:
            line = self._lines[0]
            if len(line) >= select.PIPE_BUF:  # never: PER_LINE keeps lines short
                raise DaemonError(f"a count line of {len(line)} bytes would not be atomic")
            try:
                os.write(self.fd, line)  # atomic: the whole line, or BlockingIOError
            except BlockingIOError:
                return
            self._lines.pop(0)

    def _flush_within(self, timeout: float) -> bool:
        """Flush, waiting up to ``timeout`` for room; whether everything went."""
        deadline = time.monotonic() + timeout
        self.flush()
        while self._lines and time.monotonic() < deadline:
            select.select([], [self.fd], [], 0.05)
            self.flush()
        return not self._lines

    def close(self, timeout: float = 1.0) -> None:
        """The last flush: wait up to ``timeout`` for room; drop the rest if the worker is
        gone."""
        with contextlib.suppress(BrokenPipeError):
            self._flush_within(timeout)

    def ready(self, timeout: float = START_S) -> None:
        """Say this replica accepts, ahead of any count, waiting for room (the worker would
        otherwise keep the previous one serving)."""
        self._lines.insert(0, msgspec.json.encode(("ready", os.getpid())) + b"\n")
        if not self._flush_within(timeout):
            raise DaemonError(f"the worker read nothing from its pipe for {timeout:.0f} s")


class HintReplicas:
    """The worker's side: the listening socket, the refresh, the handover, the counts."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        s = daemon.settings
        self.sock = socket.create_server((s.web_host, s.hint_port), backlog=1024)
        self.port = self.sock.getsockname()[1]
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._buffer = b""
        self._loop: asyncio.AbstractEventLoop | None = None  # the worker's, reading the pipe
        #: live replicas -> (serial, monotonic time of the fork): the serial orders them
        self.forked_at: dict[int, tuple[int, float]] = {}
        self.serving: int | None = None  # the newest replica that said it is ready
        self.stopping: dict[int, float] = {}  # replicas told to stop -> when (monotonic)
        self._serial = 0
        self._refreshing = self._stopped = False
        metrics = daemon.metrics
        self._refreshes = metrics.hint_replica_refreshes
        metrics.hint_replica_age.set_function(
            lambda: time.monotonic() - self.forked_at[self.serving][1]
            if self.serving in self.forked_at else float("nan"))

    # -- the worker's side ------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Fork a replica of the learners as they are now; the older ones are stopped once
        it accepts. Never raises: a failed fork leaves the serving replica serving."""
        if self._refreshing or self._stopped:  # the start's and the timer's may meet
            return
        self._refreshing = True
        try:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
                self._loop.add_reader(self._read_fd, self._drain)
            self._reap()
            if len(self.forked_at) >= MAX_LIVE:
                self._refreshes.labels(outcome="skipped").inc()
                return
            parent = os.getpid()
            async with self.daemon.pipeline.quiet():
                if self._stopped:
                    return
                # once here, rather than in every replica at its first gossip hint
                self.daemon.pipeline.network.learn_queued()
                held = time.perf_counter()
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # none lands mid-fork
                try:
                    pid = os.fork()
                    if pid == 0:
                        self._child(parent)  # never returns
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                self.daemon.metrics.hint_replica_hold.observe(time.perf_counter() - held)
            self._serial += 1
            self.forked_at[pid] = (self._serial, time.monotonic())
        except Exception:
            self._refreshes.labels(outcome="failed").inc()
            log.exception("a hint replica could not be forked; the serving one goes on")
        finally:
            self._refreshing = False

    def _drain(self) -> None:
        """Apply the counts the replicas sent (on the worker's loop, when the pipe is
        readable)."""
        try:
            self._buffer += os.read(self._read_fd, 1 << 16)
        except BlockingIOError:
            return
        *lines, self._buffer = self._buffer.split(b"\n")
        meter, metrics = self.daemon.hints.meter, self.daemon.metrics
        for line in lines:
            try:
                kind, *args = msgspec.json.decode(line)
                if kind == "ready":
                    self._ready(int(args[0]))
                elif kind == "hint":
                    hint, source, micros = args
                    for value in micros:
                        meter.hint(hint, source, None if value is None else value / 1e6)
                elif kind == "lsh_query":
                    for value in args[0]:
                        meter.lsh_query(value / 1e6)
                elif kind == "count" and args[0] == "canary":
                    metrics.canary_hints.labels(model=args[1], arm=args[2]).inc(args[3])
                elif kind == "count" and args[0] == "routed":
                    metrics.hints_routed.labels(outcome=args[1]).inc(args[2])
                else:
                    log.warning("a hint replica sent a count of unknown kind: %r", line)
            except (msgspec.MsgspecError, ValueError, TypeError, IndexError):
                log.warning("a hint replica sent a count the worker cannot read: %r", line)

    def _ready(self, pid: int) -> None:
        if pid not in self.forked_at or pid in self.stopping:
            return
        born = self.forked_at[pid][0]
        if self.serving in self.forked_at and self.forked_at[self.serving][0] > born:
            self._stop(pid)  # forked before the one serving, late to start
            return
        for older, (serial, _) in self.forked_at.items():
            if serial < born and older not in self.stopping:
                self._stop(older)
        self.serving = pid
        self._refreshes.labels(outcome="ok").inc()

    def _stop(self, pid: int) -> None:
        self._signal(pid, signal.SIGTERM)
        self.stopping[pid] = time.monotonic()

    def _reap(self) -> None:
        """Collect replicas that exited; kill one that never became ready, or that is still
        draining ``KILL_S`` after it was told to stop."""
        clock = time.monotonic()
        for pid, (_, forked) in list(self.forked_at.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                del self.forked_at[pid]
                told = self.stopping.pop(pid, None)
                if pid == self.serving:
                    self.serving = None
                code = os.waitstatus_to_exitcode(status)
                if code != 0 and not (told is not None and code == -signal.SIGTERM):
                    self._refreshes.labels(outcome="failed").inc()
                    log.warning("hint replica %d exited with %s", pid,
                                f"signal {-code}" if code < 0 else f"status {code}")
            elif pid in self.stopping and clock - self.stopping[pid] > KILL_S:
                self._signal(pid, signal.SIGKILL)
                log.warning("hint replica %d still draining %.0f s after it was told to "
                            "stop; killed", pid, KILL_S)
            elif pid != self.serving and pid not in self.stopping and clock - forked > START_S:
                self._signal(pid, signal.SIGKILL)
                self.stopping[pid] = clock
                log.warning("hint replica %d did not start in %.0f s; killed", pid, START_S)

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop every replica (killed after ``timeout``: the worker is going, and its hints
        with it) and close the socket and the pipe."""
        self._stopped = True
        for pid in list(self.forked_at):
            if pid not in self.stopping:
                self._stop(pid)
        deadline = time.monotonic() + timeout
        while self.forked_at and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for pid in list(self.forked_at):
            self._signal(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.forked_at.clear()
        self.serving = None
        self.sock.close()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._read_fd)
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the replica's side -----------------------------------------------------------------------
    def _child(self, parent: int) -> None:
        """The replica: serve until told to stop or orphaned, then exit (never returns)."""
        code = 1  # nothing here may touch the worker's loop, sockets or signal wake-up fd
        try:
            signal.set_wakeup_fd(-1)
            for sig in _SIGNALS:  # a terminal's ^C reaches the worker, which stops us
                signal.signal(sig, signal.SIG_IGN if sig == signal.SIGINT else signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            gc.callbacks.clear()  # the worker's (they take its metrics' locks)
            gc.freeze()  # collections skip the image (and so leave its pages shared)
            self._let_go()
            _reseed(self.daemon.pipeline)
            loop = asyncio.SelectorEventLoop()
            loop.run_until_complete(self._serve(parent))
            code = 0
        except BaseException:
            os.write(2, traceback.format_exc().encode())
        finally:
            os._exit(code)

    def _let_go(self) -> None:
        """Point every inherited descriptor but stdio, the socket and the pipe at /dev/null:
        the worker's connections close for their clients when the worker closes them, and a
        stale Python object closing its number later closes nothing of ours."""
        keep = {0, 1, 2, self.sock.fileno(), self._write_fd}
        null = os.open(os.devnull, os.O_RDWR)
        try:
            for name in os.listdir("/proc/self/fd"):
                fd = int(name)
                if fd not in keep and fd != null:
                    with contextlib.suppress(OSError):
                        os.dup2(null, fd, inheritable=False)
        except FileNotFoundError:  # no /proc: leave them (only their clients wait longer)
            pass
        finally:
            os.close(null)

    async def _serve(self, parent: int) -> None:
        from aiohttp import web

        daemon, settings = self.daemon, self.daemon.settings
        meter = PipeMeter(self._write_fd)
        hints = HintService(daemon.pipeline, meter)
        forward = Forwarder(daemon.forward.own_url, daemon.forward.distribution,
                            settings.route_timeout_s, meter.routed,
                            port=settings.hint_port or None)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

        def answer(call, *args) -> web.Response:
            try:
                return web.json_response(call(*args), dumps=_dumps)
            except BadRequest as exc:
                return web.json_response({"error": exc.reason}, status=400, dumps=_dumps)

        def posted(kind: str):
            call = getattr(hints, kind)

            async def handle(request: web.Request) -> web.Response:
                body = await request.read()
                owned = await forward(kind, body, request.headers.get(FORWARDED))
                if owned is None:
                    return answer(call, body)
                status, text, owner = owned
                return web.Response(body=text, status=status, content_type="application/json",
                                    headers={"X-Pakit-Answered-By": owner})
            return handle

        async def similar(request: web.Request) -> web.Response:
            return answer(hints.similar, request.match_info["block_hash"],
                          request.query.get("top_k", "5"), request.query.get("min_jaccard"))

        async def policy(request: web.Request) -> web.Response:
            return answer(hints.codec_policy, asyncio.get_running_loop().call_soon)

        @web.middleware
        async def closing(request: web.Request, handler) -> web.StreamResponse:
            response = await handler(request)
            if stop.is_set():  # "Connection: close": the next request goes to the new replica
                response.force_close()
            return response

        handlers = {"hint_similar": similar, "policy_codec": policy,
                    **{f"hint_{kind}": posted(kind)
                       for kind in ("peer", "network", "compression", "prefetch")}}
        app = web.Application(middlewares=[closing])
        for route in ROUTES:  # what nodes ask, as the one route table has it
            if route.name in handlers:
                add = app.router.add_get if route.method == "get" else app.router.add_post
                add(route.path, handlers[route.name])  # a GET answers HEAD too, as Faust's
        hints.compile_policy()  # before serving: a node's first ask must not wait for it
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.SockSite(runner, self.sock)
        await site.start()
        meter.ready()
        try:
            while not stop.is_set() and os.getppid() == parent:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), FLUSH_S)
                meter.flush()
            stop.set()
            await site.stop()  # accepts no more; what is open finishes
            deadline = time.monotonic() + DRAIN_S
            while runner.server.connections and time.monotonic() < deadline \
                    and os.getppid() == parent:
                await asyncio.sleep(FLUSH_S)
                meter.flush()
        except BrokenPipeError:  # the worker is gone: nothing to count for, nobody to serve
            pass
        await runner.cleanup()
        meter.close()


def _reseed(root, depth: int = 3) -> None:
    """Reseed every ``random.Random`` reachable from ``root`` through the attributes of
    pakit_stream's and River's objects: each replica draws its exploration afresh, instead of
    repeating the worker's draws from the fork on."""
    seen: set[int] = set()

    def walk(obj, depth: int) -> None:
        if depth < 0 or id(obj) in seen:
            return
        seen.add(id(obj))
        for value in getattr(obj, "__dict__", {}).values():
            if isinstance(value, random.Random):
                value.seed(os.urandom(16))
            elif type(value).__module__.split(".")[0] in ("pakit_stream", "river"):
                walk(value, depth - 1)

    walk(root, depth)


def _dumps(answer) -> str:
    return msgspec.json.encode(answer).decode()
