"""test.py_async: an `async def` handler. Actions (the payload's "action"):

  gather {n}    -> waits until n messages are in flight at once on this
                   worker (fails with `unavailable` after 2 s otherwise)
  greet {name}  -> awaits a call to logic.greet through the host
  count         -> awaits the cell's state: increments "n"
"""

import asyncio

from cbs_cell import Context, Unavailable

_active = 0
_peak = 0


async def handle(payload: dict, ctx: Context) -> dict:
    action = payload["action"]
    if action == "gather":
        return {"value": await _gather(payload["n"])}
    if action == "greet":
        reply = await ctx.request("logic.greet", {"name": payload["name"]})
        return {"value": reply["greeting"]}
    if action == "count":
        return {"value": await ctx.state.increment("n")}
    raise ValueError(f"unknown action {action}")


async def _gather(n: int) -> int:
    global _active, _peak
    _active += 1
    _peak = max(_peak, _active)
    try:
        for _ in range(200):
            if _peak >= n:
                return n
            await asyncio.sleep(0.01)
        raise Unavailable(f"only {_peak} messages were in flight at once")
    finally:
        _active -= 1
