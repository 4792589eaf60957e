"""logic.stats: statistics of a list of numbers, with numpy (the native pool)."""

import numpy as np

from cbs_cell import Context, InvalidInput


def handle(payload: dict, ctx: Context) -> dict:
    values = np.asarray(payload["numbers"], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InvalidInput("numbers must be finite")
    ctx.log.debug("statistics of %d numbers", values.size)
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }
