"""What a handler gets besides its payload: the flow it is part of, a
logger, and calls to other cells through the host."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Mapping, Optional

#: JSON values as Python sees them.
Json = Any

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

    def request(self, cell_id: str, payload: Json, timeout_ms: Optional[int] = None) -> Json:
        """Requests another cell (granted in ``[capabilities] calls``) and
        returns its reply payload; raises the callee's typed ``CellError``.
        The host never waits past this message's own deadline."""
        return self._request(cell_id, payload, timeout_ms)

    def publish(self, subject: str, payload: Json) -> None:
        """Publishes to a subject granted in ``[capabilities] publish``."""
        self._publish(subject, payload)

    @abstractmethod
    def _request(self, cell_id: str, payload: Json, timeout_ms: Optional[int]) -> Json: ...

    @abstractmethod
    def _publish(self, subject: str, payload: Json) -> None: ...

    @abstractmethod
    def _log(self, level: str, message: str) -> None: ...

    def _enabled(self, level: str) -> bool:
        """Whether the host logs lines of `level`."""
        return True
