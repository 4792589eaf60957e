"""logic.describe: a list of numbers in words. Pure Python, so it runs
sandboxed as a WebAssembly component; the arithmetic is asked of
logic.stats, which runs numpy in the native pool."""

from cbs_cell import Context


def handle(payload: dict, ctx: Context) -> dict:
    stats = ctx.request("logic.stats", {"numbers": payload["numbers"]})
    summary = (
        f"{stats['count']} numbers from {stats['min']:g} to {stats['max']:g}: "
        f"mean {stats['mean']:.4g}, median {stats['median']:.4g}, "
        f"standard deviation {stats['std']:.4g}"
    )
    ctx.log.info("described %d numbers", stats["count"])
    return {"summary": summary, "stats": stats}
