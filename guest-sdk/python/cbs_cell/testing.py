"""A context for unit tests of a handler, outside any runtime: calls to
other cells answer from a table, publishes and state are kept in memory,
logs are recorded.

    from cbs_cell.testing import TestContext
    ctx = TestContext(replies={"logic.greet": {"greeting": "Hi"}})
    assert handle({"text": "hi"}, ctx) == {...}
"""

from __future__ import annotations

import base64
import time
from typing import Any, Optional

from .context import Context, Json
from .errors import NotFound


class TestContext(Context):
    """One message's context, with nothing behind it but this object."""

    __test__ = False  # not a test case, whatever a test runner guesses

    def __init__(
        self,
        cell_id: str = "test.cell",
        replies: Optional[dict[str, Json]] = None,
        deadline_ms: Optional[int] = None,
    ) -> None:
        super().__init__(cell_id, {"id": "m1", "correlation_id": "c1", "subject": f"cbs.{cell_id}"})
        if deadline_ms is not None:
            self._deadline = time.monotonic() + deadline_ms / 1000
        self.replies = dict(replies or {})
        self.requests: list[tuple[str, Json]] = []
        self.published: list[tuple[str, Json]] = []
        self.logs: list[tuple[str, str]] = []
        self.store: dict[str, bytes] = {}

    def _request(self, cell_id: str, payload: Json, timeout_ms: Optional[int]) -> Json:
        self.requests.append((cell_id, payload))
        if cell_id not in self.replies:
            raise NotFound(f"no reply for {cell_id} in this TestContext")
        return self.replies[cell_id]

    def _publish(self, subject: str, payload: Json) -> None:
        self.published.append((subject, payload))

    def _log(self, level: str, message: str) -> None:
        self.logs.append((level, message))

    def _state(self, op: dict[str, Any]) -> dict[str, Any]:
        key = op.get("key", "")
        kind = op["op"]
        if kind == "get":
            raw = self.store.get(key)
            return {"value": None if raw is None else base64.b64encode(raw).decode()}
        if kind == "set":
            self.store[key] = base64.b64decode(op["value"])
            return {}
        if kind == "delete":
            self.store.pop(key, None)
            return {}
        if kind == "exists":
            return {"exists": key in self.store}
        if kind == "keys":
            return {"keys": sorted(self.store), "cursor": None}
        if kind == "increment":
            value = int(self.store.get(key, b"0")) + int(op["delta"])
            self.store[key] = str(value).encode()
            return {"value": value}
        raise ValueError(f"unknown state op {kind}")
