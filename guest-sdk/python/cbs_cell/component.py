"""The component runtime: exports a handler as the ``cbs:cell`` world.

Used only inside a component built by componentize-py (``wit_world`` exists
only there). ``scripts/build-python-cell`` generates the app module::

    from cbs_cell.component import export
    import stats
    WitWorld = export(stats.handle, cell_id="logic.stats", version="0.1.0")
"""

from __future__ import annotations

import base64
import json
from typing import Any, Optional, Union

from componentize_py_types import Err  # type: ignore[import-not-found]
from wit_world.imports import bus, types  # type: ignore[import-not-found]
from wit_world.imports import log as wit_log  # type: ignore[import-not-found,unused-ignore]
from wit_world.imports import atomics, store  # type: ignore[import-not-found,unused-ignore]

from .cell import CellClass, Handler, is_async, resolve, run
from .context import Context, Json, to_json
from .errors import CellError

_LEVELS = {
    "trace": wit_log.Level.TRACE,
    "debug": wit_log.Level.DEBUG,
    "info": wit_log.Level.INFO,
    "warn": wit_log.Level.WARN,
    "error": wit_log.Level.ERROR,
}


class ComponentContext(Context):
    """A message's context in a component: calls are the world's imports."""

    def _request(self, cell_id: str, payload: Json, timeout_ms: Optional[int]) -> Json:
        try:
            return json.loads(bus.request(cell_id, to_json(payload), int(timeout_ms or 0)))
        except Err as e:
            raise _from_wit(e.value) from None

    def _publish(self, subject: str, payload: Json) -> None:
        try:
            bus.publish(subject, to_json(payload))
        except Err as e:
            raise _from_wit(e.value) from None

    def _log(self, level: str, message: str) -> None:
        wit_log.log(_LEVELS.get(level, wit_log.Level.INFO), message)

    def _state(self, op: dict[str, Any]) -> dict[str, Any]:
        """A ``state`` operation through ``wasi:keyvalue``, answered in the
        shape of the native runtime's ``state`` frames."""
        try:
            bucket = store.open("default")
            kind, key = op["op"], op.get("key", "")
            if kind == "get":
                value = bucket.get(key)
                return {"value": None if value is None else base64.b64encode(value).decode()}
            if kind == "set":
                bucket.set(key, base64.b64decode(op["value"]))
                return {}
            if kind == "delete":
                bucket.delete(key)
                return {}
            if kind == "exists":
                return {"exists": bucket.exists(key)}
            if kind == "keys":
                page = bucket.list_keys(op.get("cursor"))
                return {"keys": list(page.keys), "cursor": page.cursor}
            if kind == "increment":
                return {"value": atomics.increment(bucket, key, op.get("delta", 1))}
            raise CellError.from_wire({"code": "internal", "message": f"unknown state op {kind!r}"})
        except Err as e:
            raise _from_keyvalue(e.value) from None


def _from_keyvalue(error: Any) -> CellError:
    """A ``wasi:keyvalue`` error: the host writes ``"<code>: <message>"``."""
    text = getattr(error, "value", None)
    if isinstance(text, str):
        code, _, message = text.partition(": ")
        return CellError.from_wire({"code": code, "message": message or text})
    if type(error).__name__.endswith("AccessDenied"):
        return CellError.from_wire(
            {"code": "contract_violation", "message": "this cell has no state: add [capabilities.state] to its cell.toml"}
        )
    return CellError.from_wire({"code": "not_found", "message": "no such state store"})


def _from_wit(error: Any) -> CellError:
    return CellError.from_wire(
        {"code": error.code.name.lower(), "message": error.message, "details": error.details}
    )


def _to_wit(error: dict[str, Any]) -> Any:
    details = error.get("details")
    return types.CellError(
        code=types.ErrorCode[error["code"].upper()],
        message=error["message"],
        details=None if details is None else to_json(details),
    )


def export(
    handler: Union[Handler, type, CellClass],
    *,
    cell_id: str,
    version: str,
    input_schema: Optional[str] = None,
    output_schema: Optional[str] = None,
) -> type:
    """The ``WitWorld`` class componentize-py exports, serving ``handler``.
    Raises (and so fails the build, which runs this at pre-initialization)
    for an ``async def`` handler: a component has no event loop."""
    handle = resolve(handler)
    if is_async(handle):
        raise TypeError(
            f"cell {cell_id}: an `async def` handler runs only in the native pool: "
            'set runtime = "python" in cell.toml, or make the handler a plain `def`'
        )

    class WitWorld:
        def handle(self, msg: Any) -> Any:
            envelope = {
                "id": msg.id,
                "correlation_id": msg.correlation_id,
                "causation_id": msg.causation_id,
                "subject": msg.subject,
                "schema": msg.schema,
                "headers": dict(msg.headers),
            }
            text, error = run(handle, json.loads(msg.payload), ComponentContext(cell_id, envelope))
            if error is not None:
                raise Err(_to_wit(error))
            return types.Outgoing(payload=text, schema=None, headers=[])

        def describe(self) -> Any:
            return types.CellInfo(
                id=cell_id, version=version, input_schema=input_schema, output_schema=output_schema
            )

    return WitWorld
