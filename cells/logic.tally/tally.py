"""logic.tally: totals per SKU from `orders.created` events.

An event (subject orders.created) adds its qty to the SKU's total, once per
event id: a redelivered event (after a host died holding it) is recognized
by the id kept in state and not counted twice. A request (subject
cbs.logic.tally) answers the SKU's total.
"""

from cbs_cell import Context


def handle(payload: dict, ctx: Context) -> dict:
    sku = payload["sku"]
    if ctx.subject.startswith("cbs."):
        return {"sku": sku, "total": total(ctx, sku)}
    seen = f"seen/{ctx.message_id}"
    if ctx.state.exists(seen):
        ctx.log.info("event %s was counted before", ctx.message_id)
        return {"sku": sku, "total": total(ctx, sku)}
    counted = ctx.state.increment(f"total/{sku}", payload.get("qty", 1))
    ctx.state.set(seen, b"1")
    ctx.log.info("%s: %d", sku, counted)
    return {"sku": sku, "total": counted}


def total(ctx: Context, sku: str) -> int:
    raw = ctx.state.get(f"total/{sku}")
    return int(raw) if raw else 0
