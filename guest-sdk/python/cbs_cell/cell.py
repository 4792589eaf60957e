"""Finding the handler in a cell's module and running it on one message.

A handler is either a function ``handle(payload, ctx) -> dict`` or a class
whose instances have such a ``handle`` method (made once per process or
component instance, so ``__init__`` can load models or tables). Both
runtimes use this module, so a cell behaves the same in each.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from typing import Any, Callable, Protocol, Union

from .context import Context, Json, to_json
from .errors import CellError, ContractViolation

Handler = Callable[[Json, Context], Json]


class CellClass(Protocol):
    def handle(self, payload: Json, ctx: Context) -> Json: ...


def resolve(obj: Union[Handler, type, CellClass], name: str = "handle") -> Handler:
    """A callable ``(payload, ctx)`` from a function, a class or an instance."""
    if isinstance(obj, type):
        obj = obj()
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return obj
    method = getattr(obj, "handle", None)
    if callable(method):
        return method  # type: ignore[no-any-return]
    if callable(obj):
        return obj
    raise TypeError(f"{name} is neither a function nor a class with a handle(payload, ctx) method")


def load(module: str, attribute: str = "handle") -> Handler:
    """Imports ``module`` and resolves its handler ``attribute``."""
    mod = importlib.import_module(module)
    try:
        obj = getattr(mod, attribute)
    except AttributeError:
        raise LookupError(
            f"module {module} has no {attribute!r}: define `def {attribute}(payload, ctx)` "
            f"or a class with a handle method, or set [python] handler in cell.toml"
        ) from None
    return resolve(obj, f"{module}.{attribute}")


def is_async(handler: Handler) -> bool:
    """Whether the handler is ``async def`` (run on the worker's event loop)."""
    call = getattr(handler, "__call__", None)
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


Outcome = tuple[Union[str, None], Union[dict[str, Any], None]]


def run(handler: Handler, payload: Json, ctx: Context) -> Outcome:
    """Runs the handler on one (parsed) payload: ``(reply JSON text, None)`` or
    ``(None, error)``. A typed ``CellError`` is passed on as it is; any other
    exception becomes ``cell_failed`` with its traceback in the host log,
    never in the reply."""
    try:
        result = handler(payload, ctx)
    except Exception as e:  # noqa: BLE001 - every failure becomes a typed reply
        return _failed(e, ctx)
    return _replied(result, ctx)


async def run_async(handler: Handler, payload: Json, ctx: Context) -> Outcome:
    """As :func:`run`, for an ``async def`` handler."""
    try:
        result = await handler(payload, ctx)  # type: ignore[misc]
    except Exception as e:  # noqa: BLE001 - every failure becomes a typed reply
        return _failed(e, ctx)
    return _replied(result, ctx)


def _failed(e: Exception, ctx: Context) -> Outcome:
    if isinstance(e, CellError):
        return None, _sendable(e.to_wire())
    ctx._log("error", f"handler raised {type(e).__name__}:\n{traceback.format_exc()}")
    message = f"cell {ctx.cell_id} raised {type(e).__name__}: {e}"
    return None, {"code": "cell_failed", "message": message}


def _replied(result: Json, ctx: Context) -> Outcome:
    # Strict JSON: Python would write NaN and Infinity, which no JSON
    # parser (the host's included) takes.
    try:
        return to_json(result), None
    except (TypeError, ValueError) as e:
        return None, ContractViolation(
            f"cell {ctx.cell_id} returned a value that is not JSON ({e}){_hint(e)}"
        ).to_wire()


def _hint(e: Exception) -> str:
    # json's ValueError for NaN and infinities ("Out of range float values");
    # a circular reference is a ValueError too, and needs no hint.
    return "; JSON has no NaN or infinite numbers" if "Out of range" in str(e) else ""


def _sendable(error: dict[str, Any]) -> dict[str, Any]:
    """A typed error whose details are not JSON still reaches the host: as
    itself without the details."""
    try:
        to_json(error)
    except (TypeError, ValueError) as e:
        return {"code": error["code"], "message": f"{error['message']} (its details are not JSON: {e})"}
    return error
