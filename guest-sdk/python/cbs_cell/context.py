"""What a handler gets besides its payload: the flow it is part of, a
logger, and calls to other cells through the host."""

from __future__ import annotations

import base64
import json
import time
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping, Optional, Union

#: JSON values as Python sees them.
Json = Any


def to_json(value: Json) -> str:
    """``value`` as strict JSON text; ``ValueError`` on NaN or an infinity,
    which Python would write and no JSON parser (the host's included) takes."""
    return json.dumps(value, allow_nan=False)

LEVELS = ("trace", "debug", "info", "warn", "error")


class Logger:
    """Logs into the host's log, tagged with the cell and the flow's
    correlation id. ``%``-style arguments are formatted as in ``logging``."""

    def __init__(self, sink: "Context") -> None:
        self._sink = sink

    def _log(self, level: str, message: str, args: tuple[Any, ...]) -> None:
        if not self._sink._enabled(level):
            return  # below the host's level: not even formatted
        if args:
            message = message % args
        self._sink._log(level, message)

    def trace(self, message: str, *args: Any) -> None:
        self._log("trace", message, args)

    def debug(self, message: str, *args: Any) -> None:
        self._log("debug", message, args)

    def info(self, message: str, *args: Any) -> None:
        self._log("info", message, args)

    def warning(self, message: str, *args: Any) -> None:
        self._log("warn", message, args)

    warn = warning

    def error(self, message: str, *args: Any) -> None:
        self._log("error", message, args)


class State:
    """The cell's own key-value state (``[capabilities.state]`` in
    cell.toml): private to the cell, kept across messages and restarts.
    Values are bytes; ``get_json``/``set_json`` store JSON. Failures raise
    typed errors: ``InvalidInput`` (bad key, value over
    ``max_value_bytes``), ``Capacity`` (past ``max_bytes``),
    ``Unavailable``, ``ContractViolation`` (state not granted)."""

    def __init__(self, sink: "Context") -> None:
        self._sink = sink

    def _call(self, op: dict[str, Any], then: Callable[[dict[str, Any]], Any]) -> Any:
        """One state operation, its result mapped by ``then``."""
        return then(self._sink._state(op))

    def get(self, key: str) -> Optional[bytes]:
        return self._call({"op": "get", "key": key}, _decoded)

    def set(self, key: str, value: Union[bytes, str]) -> None:
        raw = value.encode() if isinstance(value, str) else bytes(value)
        op = {"op": "set", "key": key, "value": base64.b64encode(raw).decode()}
        return self._call(op, _nothing)

    def get_json(self, key: str) -> Json:
        return self._call({"op": "get", "key": key}, _json)

    def set_json(self, key: str, value: Json) -> None:
        return self.set(key, to_json(value))

    def delete(self, key: str) -> None:
        return self._call({"op": "delete", "key": key}, _nothing)

    def exists(self, key: str) -> bool:
        return self._call({"op": "exists", "key": key}, lambda r: bool(r["exists"]))

    def keys(self) -> list[str]:
        """Every key, in order."""
        keys: list[str] = []
        cursor: Optional[int] = None
        while True:
            page = self._sink._state({"op": "keys", "cursor": cursor})
            keys.extend(page["keys"])
            cursor = page.get("cursor")
            if cursor is None:
                return keys

    def increment(self, key: str, delta: int = 1) -> int:
        """Adds ``delta`` to the counter at ``key`` (0 when absent),
        atomically, and returns the sum."""
        op = {"op": "increment", "key": key, "delta": int(delta)}
        return self._call(op, lambda r: int(r["value"]))


class AsyncState(State):
    """``ctx.state`` in an ``async def`` handler: the same methods, each
    awaited (``await ctx.state.get(key)``)."""

    def _call(self, op: dict[str, Any], then: Callable[[dict[str, Any]], Any]) -> Any:
        async def call() -> Any:
            return then(await self._sink._state(op))

        return call()

    async def keys(self) -> list[str]:  # type: ignore[override]
        keys: list[str] = []
        cursor: Optional[int] = None
        while True:
            page = await self._sink._state({"op": "keys", "cursor": cursor})
            keys.extend(page["keys"])
            cursor = page.get("cursor")
            if cursor is None:
                return keys


def _not_null(payload: Json, what: str) -> None:
    if payload is None:
        from .errors import InvalidInput

        raise InvalidInput(f"{what} needs a payload: None is not one")


def _decoded(result: dict[str, Any]) -> Optional[bytes]:
    value = result["value"]
    return None if value is None else base64.b64decode(value)


def _json(result: dict[str, Any]) -> Json:
    raw = _decoded(result)
    return None if raw is None else json.loads(raw)


def _nothing(_: dict[str, Any]) -> None:
    return None


class Context(ABC):
    """One message's context. The same API in both runtimes (component and
    native pool); each runtime supplies its own transport."""

    def __init__(self, cell_id: str, envelope: Mapping[str, Any]) -> None:
        self.cell_id = cell_id
        self.message_id: str = envelope.get("id", "")
        #: Shared by every message of one flow; set once at the edge.
        self.correlation_id: str = envelope.get("correlation_id", "")
        self.causation_id: Optional[str] = envelope.get("causation_id")
        self.subject: str = envelope.get("subject", "")
        self.schema: Optional[str] = envelope.get("schema")
        self.headers: dict[str, str] = dict(envelope.get("headers") or {})
        self.log = Logger(self)
        #: The cell's key-value state.
        self.state = State(self)
        #: When the host stops waiting for this message (``time.monotonic()``
        #: seconds), where the runtime says.
        self._deadline: Optional[float] = None

    def remaining_ms(self) -> Optional[int]:
        """Milliseconds left before this message's deadline (0 once passed),
        or ``None`` where the runtime does not say (a component). Calls need
        not be capped by it: the host caps them."""
        if self._deadline is None:
            return None
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def request(self, cell_id: str, payload: Json, timeout_ms: Optional[int] = None) -> Json:
        """Requests another cell (granted in ``[capabilities] calls``) and
        returns its reply payload; raises the callee's typed ``CellError``.
        The host never waits past this message's own deadline. A ``None``
        payload raises ``InvalidInput``: the protocol has no null payload."""
        _not_null(payload, f"a request to {cell_id}")
        return self._request(cell_id, payload, timeout_ms)

    def publish(self, subject: str, payload: Json) -> None:
        """Publishes to a subject granted in ``[capabilities] publish``."""
        _not_null(payload, f"a publish to {subject}")
        self._publish(subject, payload)

    @abstractmethod
    def _request(self, cell_id: str, payload: Json, timeout_ms: Optional[int]) -> Json: ...

    @abstractmethod
    def _publish(self, subject: str, payload: Json) -> None: ...

    @abstractmethod
    def _log(self, level: str, message: str) -> None: ...

    @abstractmethod
    def _state(self, op: dict[str, Any]) -> dict[str, Any]:
        """Runs one state operation (the fields of a ``state`` frame, see
        docs/sidecar-protocol.md) and returns its result."""

    def _enabled(self, level: str) -> bool:
        """Whether the host logs lines of `level`."""
        return True
