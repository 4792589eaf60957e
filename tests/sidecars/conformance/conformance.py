"""The conformance actions on the Python SDK: served by its worker as a
plain sidecar (`python3 -m cbs_cell.worker --module conformance`), the same
vocabulary the reference sidecar speaks (tests/sidecars/reference)."""

import os
import threading

from cbs_cell import Context, InvalidInput, Unavailable

_lock = threading.Condition()
_active = 0
_peak = 0


def handle(payload: dict, ctx: Context) -> dict:
    action = payload["action"]
    if action == "echo":
        return {"value": payload.get("value")}
    if action == "gather":
        return {"value": _gather(payload["n"])}
    if action == "call":
        return {"value": ctx.request(payload["cell"], payload["payload"])}
    if action == "fail":
        raise InvalidInput(payload["message"])
    if action == "crash":
        os._exit(3)
    if action == "fail_with_details":
        raise InvalidInput(payload["message"], details=payload["details"])
    if action == "raise":
        raise RuntimeError(payload["message"])
    if action == "not_json":
        return {"value": {1, 2}}
    if action == "call_null":
        return {"value": ctx.request(payload["cell"], None)}
    if action == "big":
        return {"value": "x" * payload["bytes"]}
    if action == "deadline":
        left = ctx.remaining_ms()
        return {"value": {"within": left is not None and 0 < left <= payload["deadline_ms"]}}
    if action == "log":
        for level in ("debug", "info", "warn", "error"):
            getattr(ctx.log, level)(f"a {level} line")
        return {"value": "logged"}
    raise InvalidInput(f"unknown action {action!r}")


def _gather(n: int) -> int:
    global _active, _peak
    with _lock:
        _active += 1
        _peak = max(_peak, _active)
        _lock.notify_all()
        ok = _lock.wait_for(lambda: _peak >= n, timeout=10)
        _active -= 1
    if not ok:
        raise Unavailable(f"only {_peak} in flight at once")
    return n
