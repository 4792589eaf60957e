"""The native runtime: serves one cell over the CBS process protocol
(docs/sidecar-protocol.md) on a pair of file descriptors.

The host's native Python pool runs this inside ``cbs-host python-worker``
(CPython embedded through pyo3, with the cell's venv); it also runs as a
plain sidecar: ``python -m cbs_cell.worker --module greet``.

With one handler thread (``--threads 1``, the default) everything happens
on the calling thread, in order: no thread hand-offs, no GIL contention.
Frames are read in large chunks and replies are written in batches, flushed
before the worker would wait for input or once a reply is older than
``FLUSH_AFTER``: at many messages in flight, one system call carries many
frames. A handler's call to another cell reads on until its response comes,
keeping the ``handle``s that arrive meanwhile for later.

With more threads, the calling thread only reads: ``handle``s go to a queue
served by the handler threads, ``response``s wake the handler waiting for
them, and every frame is written at once.

An ``async def`` handler runs on one asyncio event loop, which also reads
the frames (``add_reader``): up to ``--threads`` messages run at once
(``[python] max_concurrency``), each awaiting ``ctx.request``,
``ctx.publish`` and ``ctx.state`` without holding a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import faulthandler
import itertools
import json
import os
import queue
import struct
import sys
import threading
import time
from typing import Any, Optional

from .cell import Handler, is_async, load, run, run_async
from .context import AsyncState, Context, Json, _not_null, to_json
from .errors import CellError, Unavailable

#: Protocol versions this runtime speaks.
PROTOCOL = 1
DEFAULT_MAX_FRAME = 1 << 20
#: Longest a written reply waits in the output batch, in seconds.
FLUSH_AFTER = 0.0005
READ_CHUNK = 1 << 16
_HEAD = struct.Struct(">I")
#: Log levels by severity; `off` is above all.
_RANK = {"trace": 0, "debug": 1, "info": 2, "warn": 3, "error": 4, "off": 5}


class ProtocolError(Exception):
    """The peer broke the protocol; the stream cannot be trusted after it."""


class Channel:
    """Length-prefixed JSON frames (a 4-byte big-endian length, then JSON)
    on two file descriptors, read in chunks and, when ``batch`` is on,
    written in batches."""

    def __init__(self, in_fd: int, out_fd: int, batch: bool = False) -> None:
        self._in = in_fd
        self._out = out_fd
        self._buf = bytearray()
        self._pos = 0
        self._pending = bytearray()
        self._pending_since = 0.0
        self._lock = threading.Lock()
        self.batch = batch
        self.max_frame = DEFAULT_MAX_FRAME

    @property
    def in_fd(self) -> int:
        return self._in

    def read(self) -> Optional[dict[str, Any]]:
        """The next frame, or None at the end of the stream. Flushes the
        output batch before waiting for input."""
        while (frame := self.take()) is None:
            self.flush()
            chunk = os.read(self._in, READ_CHUNK)
            if not chunk:
                self.end()
                return None
            self.feed(chunk)
        return frame

    def feed(self, chunk: bytes) -> None:
        """Adds bytes read from the input (by whoever reads it)."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += chunk

    def end(self) -> None:
        """The input ended: an error if inside a frame."""
        if len(self._buf) > self._pos:
            raise ProtocolError("the stream ended inside a frame")

    def take(self) -> Optional[dict[str, Any]]:
        """A whole frame from the input buffer, if one is there."""
        start = self._pos + 4
        if len(self._buf) < start:
            return None
        (n,) = _HEAD.unpack_from(self._buf, self._pos)
        if n > self.max_frame:
            raise ProtocolError(f"oversize frame: {n} bytes, at most {self.max_frame}")
        if len(self._buf) < start + n:
            return None
        self._pos = start + n
        frame = json.loads(self._buf[start : start + n])
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            raise ProtocolError("a frame is not a JSON object with a string `type`")
        return frame

    def write(self, frame: dict[str, Any]) -> None:
        self.write_raw(to_json(frame).encode())

    def write_raw(self, body: bytes) -> None:
        with self._lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending += _HEAD.pack(len(body))
            self._pending += body
            if not self.batch:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def flush_if_stale(self) -> None:
        """Flushes a batch whose first frame waited longer than FLUSH_AFTER."""
        if self._pending and time.monotonic() - self._pending_since > FLUSH_AFTER:
            self.flush()

    def _flush_locked(self) -> None:
        view = memoryview(self._pending)
        while view:
            written = os.write(self._out, view)
            view = view[written:]
        view.release()
        self._pending.clear()


class NativeContext(Context):
    """A message's context in a worker: calls go to the host as frames."""

    def __init__(self, worker: "Worker", frame: dict[str, Any]) -> None:
        super().__init__(worker.cell_id, frame.get("envelope") or {})
        self._worker = worker
        self._parent: int = frame["id"]
        deadline_ms = frame.get("deadline_ms")
        if isinstance(deadline_ms, (int, float)):
            self._deadline = time.monotonic() + deadline_ms / 1000

    def _request(self, cell_id: str, payload: Json, timeout_ms: Optional[int]) -> Json:
        frame = {"type": "request", "parent": self._parent, "cell": cell_id, "payload": payload}
        if timeout_ms is not None:
            frame["timeout_ms"] = int(timeout_ms)
        return self._worker.call_host(frame)

    def _publish(self, subject: str, payload: Json) -> None:
        self._worker.call_host(
            {"type": "publish", "parent": self._parent, "subject": subject, "payload": payload}
        )

    def _state(self, op: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._worker.call_host({"type": "state", "parent": self._parent, **op})
        return result

    def _log(self, level: str, message: str) -> None:
        self._worker.channel.write(
            {"type": "log", "level": level, "message": message, "parent": self._parent}
        )

    def _enabled(self, level: str) -> bool:
        return _RANK.get(level, 2) >= self._worker.log_rank


class AsyncNativeContext(NativeContext):
    """A message's context for an ``async def`` handler: ``ctx.request``,
    ``ctx.publish`` and ``ctx.state``'s methods are awaited."""

    def __init__(self, worker: "Worker", frame: dict[str, Any]) -> None:
        super().__init__(worker, frame)
        self.state = AsyncState(self)

    async def request(  # type: ignore[override]
        self, cell_id: str, payload: Json, timeout_ms: Optional[int] = None
    ) -> Json:
        _not_null(payload, f"a request to {cell_id}")
        frame = {"type": "request", "parent": self._parent, "cell": cell_id, "payload": payload}
        if timeout_ms is not None:
            frame["timeout_ms"] = int(timeout_ms)
        return await self._worker.call_host_async(frame)

    async def publish(self, subject: str, payload: Json) -> None:  # type: ignore[override]
        _not_null(payload, f"a publish to {subject}")
        frame = {"type": "publish", "parent": self._parent, "subject": subject, "payload": payload}
        await self._worker.call_host_async(frame)

    def _state(self, op: dict[str, Any]) -> Any:
        return self._worker.call_host_async({"type": "state", "parent": self._parent, **op})


class Worker:
    """Serves `handle` frames with a handler: inline, on `threads` threads,
    or, for an ``async def`` handler, on an event loop (`threads` at once)."""

    def __init__(self, channel: Channel, handler: Handler, cell_id: str, threads: int = 1) -> None:
        self.channel = channel
        self.handler = handler
        self.cell_id = cell_id
        self.threads = max(1, threads)
        self.is_async = is_async(handler)
        self.inline = self.threads == 1 and not self.is_async
        #: Lines below the host's log level are dropped here.
        self.log_rank = 0
        channel.batch = self.inline
        # Inline: handles that arrived while a handler waited for a response.
        self._backlog: collections.deque[dict[str, Any]] = collections.deque()
        self._stopping = False
        # Threaded: the handler threads' work and their waiting calls.
        self._jobs: "queue.Queue[Optional[dict[str, Any]]]" = queue.Queue()
        self._pending: dict[int, list[Any]] = {}
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()
        # Async: host calls awaiting their response, by id.
        self._futures: dict[int, "asyncio.Future[dict[str, Any]]"] = {}

    @classmethod
    def for_hello(
        cls, channel: Channel, handler: Handler, hello: dict[str, Any], threads: int = 1
    ) -> "Worker":
        """A worker for the cell and log level the host's `hello` names."""
        worker = cls(channel, handler, str((hello.get("cell") or {}).get("id", "")), threads)
        worker.log_rank = _RANK.get(str(hello.get("log_level", "trace")), 0)
        return worker

    def serve(self) -> None:
        """Reads frames until `shutdown` or the end of input; returns once
        the messages already taken are answered."""
        if self.is_async:
            asyncio.run(self._serve_async())
        elif self.inline:
            self._serve_inline()
        else:
            self._serve_threaded()

    def _serve_inline(self) -> None:
        while not self._stopping:
            frame = self._backlog.popleft() if self._backlog else self.channel.read()
            if frame is None:
                break
            if frame["type"] == "handle":
                self._handle(frame)
                self.channel.flush_if_stale()
            elif not self._control(frame):
                break
        while self._backlog:  # taken before shutdown: still answered
            self._handle(self._backlog.popleft())
        self.channel.flush()

    def _serve_threaded(self) -> None:
        pool = [threading.Thread(target=self._work, daemon=True) for _ in range(self.threads)]
        for t in pool:
            t.start()
        try:
            while (frame := self.channel.read()) is not None:
                if frame["type"] == "handle":
                    self._jobs.put(frame)
                elif frame["type"] == "response":
                    self._wake(frame)
                elif not self._control(frame):
                    break
        finally:
            for _ in pool:
                self._jobs.put(None)
            for t in pool:
                t.join()

    async def _serve_async(self) -> None:
        """The event loop reads frames as they come and runs each message
        as a task. After `shutdown` it still takes the responses of the
        messages in flight; at the end of input their host calls fail."""
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(self.threads)
        tasks: set["asyncio.Task[None]"] = set()
        ended: "asyncio.Future[Optional[BaseException]]" = loop.create_future()

        def finish(why: Optional[BaseException]) -> None:
            if not ended.done():
                ended.set_result(why)

        def readable() -> None:
            try:
                chunk = os.read(self.channel.in_fd, READ_CHUNK)
                if not chunk:
                    loop.remove_reader(self.channel.in_fd)
                    self.channel.end()
                    return finish(EOFError())
                self.channel.feed(chunk)
                while (frame := self.channel.take()) is not None:
                    if frame["type"] == "handle":
                        task = loop.create_task(self._handle_async(frame, limit))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    elif frame["type"] == "response":
                        future = self._futures.get(frame.get("id", -1))
                        if future is not None and not future.done():
                            future.set_result(frame)
                    elif not self._control(frame):
                        finish(None)
            except ProtocolError as e:
                loop.remove_reader(self.channel.in_fd)
                finish(e)

        loop.add_reader(self.channel.in_fd, readable)
        why = await ended
        if why is not None:
            for future in self._futures.values():
                if not future.done():
                    future.set_exception(Unavailable("the host closed the connection during a call"))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        loop.remove_reader(self.channel.in_fd)
        self.channel.flush()
        if isinstance(why, ProtocolError):
            raise why

    async def _handle_async(self, frame: dict[str, Any], limit: asyncio.Semaphore) -> None:
        async with limit:
            envelope = frame.get("envelope") or {}
            ctx = AsyncNativeContext(self, frame)
            text, error = await run_async(self.handler, envelope.get("payload"), ctx)
            self._reply(frame["id"], text, error)

    async def call_host_async(self, frame: dict[str, Any]) -> Json:
        """Sends a request, publish or state frame; awaits its response."""
        with self._ids_lock:
            rid = next(self._ids)
        frame["id"] = rid
        future: "asyncio.Future[dict[str, Any]]" = asyncio.get_running_loop().create_future()
        self._futures[rid] = future
        try:
            self.channel.write(frame)
            response = await future
        finally:
            self._futures.pop(rid, None)
        if "error" in response:
            raise CellError.from_wire(response["error"])
        return response.get("payload")

    def _control(self, frame: dict[str, Any]) -> bool:
        """Pings and shutdown; False to stop. Unknown types are ignored
        (forward compatibility)."""
        kind = frame["type"]
        if kind == "ping":
            self.channel.write({"type": "pong", "id": frame.get("id")})
        elif kind == "shutdown":
            self._stopping = True
            return False
        return True

    def _wake(self, frame: dict[str, Any]) -> None:
        slot = self._pending.get(frame.get("id", -1))
        if slot is not None:
            slot[1] = frame
            slot[0].set()

    def _work(self) -> None:
        while (frame := self._jobs.get()) is not None:
            self._handle(frame)

    def _handle(self, frame: dict[str, Any]) -> None:
        hid = frame["id"]
        envelope = frame.get("envelope") or {}
        ctx = NativeContext(self, frame)
        text, error = run(self.handler, envelope.get("payload"), ctx)
        self._reply(hid, text, error)

    def _reply(self, hid: int, text: Optional[str], error: Optional[dict[str, Any]]) -> None:
        if error is None and text is not None:
            # The reply payload is already JSON text: splice it in, not re-encode.
            body = b'{"type":"reply","id":%d,"payload":%s}' % (hid, text.encode())
            if len(body) <= self.channel.max_frame:
                return self.channel.write_raw(body)
            message = f"the reply is {len(body)} bytes, more than the host takes ({self.channel.max_frame})"
            error = {"code": "cell_failed", "message": message}
        self.channel.write({"type": "reply", "id": hid, "error": error})

    def call_host(self, frame: dict[str, Any]) -> Json:
        """Sends a request, publish or state frame and waits for its response."""
        with self._ids_lock:
            rid = next(self._ids)
        frame["id"] = rid
        response = self._await_inline(frame, rid) if self.inline else self._await_threaded(frame, rid)
        if "error" in response:
            raise CellError.from_wire(response["error"])
        return response.get("payload")

    def _await_inline(self, frame: dict[str, Any], rid: int) -> dict[str, Any]:
        """Reads on (reading flushes the request) until the response comes;
        keeps the handles that arrive meanwhile, answers pings."""
        self.channel.write(frame)
        while True:
            got = self.channel.read()
            if got is None:
                raise Unavailable("the host closed the connection during a call")
            kind = got["type"]
            if kind == "response" and got.get("id") == rid:
                return got
            if kind == "handle":
                self._backlog.append(got)
            elif kind != "response":
                self._control(got)  # a shutdown takes effect after this message

    def _await_threaded(self, frame: dict[str, Any], rid: int) -> dict[str, Any]:
        slot: list[Any] = [threading.Event(), None]
        self._pending[rid] = slot
        try:
            self.channel.write(frame)
            slot[0].wait()
        finally:
            self._pending.pop(rid, None)
        response: dict[str, Any] = slot[1]
        return response


def handshake(channel: Channel, describe: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Answers the host's `hello`; returns it."""
    hello = channel.read()
    if hello is None:
        return None
    if hello["type"] != "hello":
        raise ProtocolError(f"expected `hello`, got `{hello['type']}`")
    channel.max_frame = int(hello.get("max_frame_bytes", DEFAULT_MAX_FRAME))
    cell = hello.get("cell") or {}
    described = {"id": cell.get("id", ""), "version": cell.get("version", "")}
    described.update({k: v for k, v in describe.items() if v is not None})
    # We speak only PROTOCOL; a host that does not refuses it (with a
    # typed error naming both versions) and ends this process.
    channel.write({"type": "describe", "protocol": PROTOCOL, "cell": described})
    return hello


def serve_fds(handler: Handler, in_fd: int, out_fd: int, threads: int = 1) -> None:
    """Serves one cell on raw file descriptors until shutdown."""
    channel = Channel(in_fd, out_fd)
    hello = handshake(channel, {})
    if hello is None:
        return
    Worker.for_hello(channel, handler, hello, threads).serve()


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m cbs_cell.worker --module M [--handler H] [--path DIR] [--threads N]``."""
    parser = argparse.ArgumentParser(prog="cbs_cell.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--module", required=True, help="the cell's module, e.g. `stats`")
    parser.add_argument("--handler", default="handle", help="function or class in it")
    parser.add_argument("--path", default=".", help="folder the module is in")
    parser.add_argument("--threads", type=int, default=1, help="messages handled at once")
    args = parser.parse_args(argv)
    # Frames own the original stdin/stdout; the cell's own prints and reads
    # must not corrupt them: stdout goes to stderr (the host log), stdin is empty.
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    faulthandler.enable()  # a segfault leaves a Python traceback in the host log
    sys.path.insert(0, os.path.abspath(args.path))
    try:
        handler = load(args.module, args.handler)
    except Exception as e:  # noqa: BLE001 - reported to the host log, then exit
        print(f"cbs_cell: cannot load the cell: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    serve_fds(handler, in_fd, out_fd, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
