"""The component runtime: exports a handler as the ``cbs:cell`` world.

Used only inside a component built by componentize-py (``wit_world`` exists
only there). ``scripts/build-python-cell`` generates the app module::

    from cbs_cell.component import export
    import stats
    WitWorld = export(stats.handle, cell_id="logic.stats", version="0.1.0")
"""

from __future__ import annotations

import json
from typing import Any, Optional, Union

from componentize_py_types import Err  # type: ignore[import-not-found]
from wit_world.imports import bus, types  # type: ignore[import-not-found]
from wit_world.imports import log as wit_log  # type: ignore[import-not-found,unused-ignore]

from .cell import CellClass, Handler, resolve, run
from .context import Context, Json
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
            return json.loads(bus.request(cell_id, json.dumps(payload), int(timeout_ms or 0)))
        except Err as e:
            raise _from_wit(e.value) from None

    def _publish(self, subject: str, payload: Json) -> None:
        try:
            bus.publish(subject, json.dumps(payload))
        except Err as e:
            raise _from_wit(e.value) from None

    def _log(self, level: str, message: str) -> None:
        wit_log.log(_LEVELS.get(level, wit_log.Level.INFO), message)


def _from_wit(error: Any) -> CellError:
    return CellError.from_wire(
        {"code": error.code.name.lower(), "message": error.message, "details": error.details}
    )


def _to_wit(error: dict[str, Any]) -> Any:
    details = error.get("details")
    return types.CellError(
        code=types.ErrorCode[error["code"].upper()],
        message=error["message"],
        details=None if details is None else json.dumps(details),
    )


def export(
    handler: Union[Handler, type, CellClass],
    *,
    cell_id: str,
    version: str,
    input_schema: Optional[str] = None,
    output_schema: Optional[str] = None,
) -> type:
    """The ``WitWorld`` class componentize-py exports, serving ``handler``."""
    handle = resolve(handler)

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
