"""Hint replicas: hints served by a process that does not ingest.

A worker's event loop learns and answers hints in turns, so while it ingests a hint waits for
slices, forks, collections and decoding (README, "Hint latency"). With ``PAKIT_STREAM_HINT_PORT``
set, the worker also serves the hint routes (and the codec policy) on that port from a
**replica**: every
``PAKIT_STREAM_HINT_REFRESH_S`` it forks, at a moment when no message is half applied
(:meth:`Pipeline.quiet <pakit_stream.pipeline.Pipeline.quiet>`), as the checkpoint does. The
child holds a copy-on-write image of the learners, answers hints from it with the same
:class:`~pakit_stream.serving.hints.HintService` and nothing else, and never learns: its
answers are at most one refresh old. The listening socket is made once by the worker and
inherited by every replica, so a request is never refused during a handover:

1. the new replica starts accepting and says so;
2. the worker tells the previous one to stop (``SIGTERM``): it stops accepting, answers what
   is in flight, closes each kept-alive connection after its next answer
   (``Connection: close``), and exits when none is left, or after ``DRAIN_S``.

A replica counts what it answers through a pipe to the worker (:class:`PipeMeter`), so the
worker's ``/metrics`` show every hint, whichever process answered it. A hint about a node
another worker owns is forwarded to that worker's API port
(:class:`~pakit_stream.routing.Forwarder`), by the group assignment of the fork. A replica
whose worker is gone exits within half a second.

What it costs: the fork holds the worker's loop for about as long as a checkpoint's (7 ms per
150 MB of learners here), once per refresh; and each page the worker writes while a replica
lives is copied, so memory grows by up to the learners' size per live replica (one, two during
a handover).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
import traceback
from typing import TYPE_CHECKING

import msgspec

from pakit_stream.routing import FORWARDED, Forwarder
from pakit_stream.serving.api import ROUTES
from pakit_stream.serving.hints import BadRequest, HintService

if TYPE_CHECKING:
    from pakit_stream.daemon.core import Daemon

__all__ = ["HintReplicas", "PipeMeter", "DRAIN_S"]

log = logging.getLogger(__name__)

#: longest a stopped replica waits for its kept-alive connections to close
DRAIN_S = 10.0
#: a replica that has not said it is ready this long after its fork is killed
START_S = 30.0
_COUNTS = ("hint", "canary", "lsh_query", "routed")


class PipeMeter:
    """A replica's :class:`~pakit_stream.serving.hints.Meter`: each count goes to the worker as
    a line of JSON on a pipe (a write under ``PIPE_BUF`` bytes is atomic). A full pipe drops
    the count rather than delay a hint; the worker counts the drops it is told of."""

    def __init__(self, fd: int) -> None:
        self.fd, self.dropped = fd, 0

    def _send(self, *record) -> None:
        try:
            os.write(self.fd, msgspec.json.encode(record) + b"\n")
        except BlockingIOError:
            self.dropped += 1

    def hint(self, hint: str, source: str, seconds: float | None = None) -> None:
        self._send("hint", hint, source, seconds)

    def canary(self, model: str, arm: str) -> None:
        self._send("canary", model, arm)

    def lsh_query(self, seconds: float) -> None:
        self._send("lsh_query", seconds)

    def routed(self, outcome: str) -> None:
        self._send("routed", outcome)

    def ready(self) -> None:
        self._send("ready", os.getpid())


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
        self._reading = False
        self.forked_at: dict[int, float] = {}  # live replicas -> when they were forked
        self.serving: int | None = None  # the newest replica that said it is ready
        self.stopping: set[int] = set()
        metrics = daemon.metrics
        self._refreshes = metrics.hint_replica_refreshes
        metrics.hint_replica_age.set_function(
            lambda: time.time() - self.forked_at[self.serving]
            if self.serving in self.forked_at else float("nan"))

    # -- the worker's side ------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Fork a replica of the learners as they are now; the previous one is stopped once
        the new one accepts."""
        loop = asyncio.get_running_loop()
        if not self._reading:
            loop.add_reader(self._read_fd, self._drain)
            self._reading = True
        self._reap()
        pipeline = self.daemon.pipeline
        async with pipeline.quiet():
            held = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                self._child()  # never returns
            self.daemon.metrics.hint_replica_hold.observe(time.perf_counter() - held)
        self.forked_at[pid] = time.time()

    def _drain(self) -> None:
        """Apply the counts the replicas sent (on the worker's loop, when the pipe is
        readable)."""
        try:
            self._buffer += os.read(self._read_fd, 1 << 16)
        except BlockingIOError:
            return
        *lines, self._buffer = self._buffer.split(b"\n")
        meter = self.daemon.hints.meter
        for line in lines:
            try:
                kind, *args = msgspec.json.decode(line)
                if kind == "ready":
                    self._ready(int(args[0]))
                elif kind == "routed":
                    self.daemon.metrics.hints_routed.labels(outcome=args[0]).inc()
                elif kind in _COUNTS:
                    getattr(meter, kind)(*args)
            except (msgspec.MsgspecError, ValueError, TypeError, IndexError):
                log.warning("a hint replica sent a count the worker cannot read: %r", line)

    def _ready(self, pid: int) -> None:
        if pid not in self.forked_at:
            return
        if self.serving is not None and self.forked_at[pid] < self.forked_at[self.serving]:
            self._signal(pid, signal.SIGTERM)  # forked before the one serving, late to start
            self.stopping.add(pid)
            return
        for older in self.forked_at:
            if older != pid and older not in self.stopping:
                self._signal(older, signal.SIGTERM)
                self.stopping.add(older)
        self.serving = pid
        self._refreshes.labels(outcome="ok").inc()

    def _reap(self) -> None:
        """Collect replicas that exited; kill one that never became ready."""
        now = time.time()
        for pid, forked in list(self.forked_at.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                del self.forked_at[pid]
                self.stopping.discard(pid)
                if pid == self.serving:
                    self.serving = None
                if os.waitstatus_to_exitcode(status) != 0:
                    self._refreshes.labels(outcome="failed").inc()
                    log.warning("hint replica %d exited with status %d", pid, status)
            elif pid != self.serving and pid not in self.stopping and now - forked > START_S:
                self._signal(pid, signal.SIGKILL)
                log.warning("hint replica %d did not start in %.0f s; killed", pid, START_S)

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every replica (killed after ``timeout``) and close the socket."""
        for pid in self.forked_at:
            self._signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.forked_at and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for pid in list(self.forked_at):
            self._signal(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.forked_at.clear()
        self.sock.close()
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the replica's side -----------------------------------------------------------------------
    def _child(self) -> None:
        """The replica: serve until told to stop or orphaned, then exit (never returns)."""
        code = 1  # nothing here may touch the worker's loop, sockets or signal wake-up fd
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            gc.freeze()  # collections skip the image (and so leave its pages shared)
            os.close(self._read_fd)
            loop = asyncio.SelectorEventLoop()
            loop.run_until_complete(self._serve())
            code = 0
        except BaseException:
            os.write(2, traceback.format_exc().encode())
        finally:
            os._exit(code)

    async def _serve(self) -> None:
        from aiohttp import web

        daemon, parent = self.daemon, os.getppid()
        meter = PipeMeter(self._write_fd)
        hints = HintService(daemon.pipeline, meter)
        forward = Forwarder(daemon.forward.own_url, daemon.forward.distribution,
                            daemon.settings.route_timeout_s, meter.routed)
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

        @web.middleware
        async def closing(request: web.Request, handler) -> web.StreamResponse:
            response = await handler(request)
            if stop.is_set():  # "Connection: close": the next request goes to the new replica
                response.force_close()
            return response

        async def policy(request: web.Request) -> web.Response:
            return answer(hints.codec_policy)

        handlers = {"hint_similar": similar, "policy_codec": policy,
                    **{f"hint_{kind}": posted(kind)
                       for kind in ("peer", "network", "compression", "prefetch")}}
        app = web.Application(middlewares=[closing])
        for route in ROUTES:  # what nodes ask, as the one route table has it
            if route.name in handlers:
                app.router.add_route(route.method.upper(), route.path, handlers[route.name])
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.SockSite(runner, self.sock)
        await site.start()
        meter.ready()
        while not stop.is_set() and os.getppid() == parent:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        stop.set()
        await site.stop()  # accepts no more; what is open finishes
        deadline = time.monotonic() + DRAIN_S
        while runner.server.connections and time.monotonic() < deadline \
                and os.getppid() == parent:
            await asyncio.sleep(0.02)
        await runner.cleanup()


def _dumps(answer) -> str:
    return msgspec.json.encode(answer).decode()
