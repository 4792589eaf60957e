"""CBS cells in Python.

A cell is one handler: a function ``handle(payload, ctx)`` (or a class with
such a ``handle`` method) that takes the request payload (a dict) and a
:class:`Context`, and returns the reply payload or raises a typed
:class:`CellError`::

    from cbs_cell import Context, InvalidInput

    def handle(payload: dict, ctx: Context) -> dict:
        if not payload["name"]:
            raise InvalidInput("name is empty")
        ctx.log.info("greeting %s", payload["name"])
        return {"greeting": f"Hello, {payload['name']}!"}

The same file runs as a WebAssembly component (``runtime = "wasm"``,
``lang = "python"`` in cell.toml, built with componentize-py) or in the
host's native CPython pool (``runtime = "python"``), where C extensions such
as numpy work.
"""

from .cell import Handler, load, resolve
from .context import Context, Json, Logger
from .errors import (
    CODES,
    Capacity,
    CellError,
    CellFailed,
    CircuitOpen,
    ContractViolation,
    Internal,
    InvalidInput,
    NotFound,
    Timeout,
    Unavailable,
)

__all__ = [
    "CODES",
    "Capacity",
    "CellError",
    "CellFailed",
    "CircuitOpen",
    "Context",
    "ContractViolation",
    "Handler",
    "Internal",
    "InvalidInput",
    "Json",
    "Logger",
    "NotFound",
    "Timeout",
    "Unavailable",
    "load",
    "resolve",
]
