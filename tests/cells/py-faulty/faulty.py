"""test.py_faulty: one Python source, served both as a component
(tests/cells/py-faulty-wasm) and in the native pool (this folder), and
misbehaving on request. Actions (the payload's "action"):

  shout {text}         -> {"text": TEXT + "!"}
  stats {values}       -> count, sum, mean (pure Python)
  call {cell, payload} -> requests another cell through the host
  publish {subject, payload}
  fail {message}       -> a typed invalid_input error
  raise {message}      -> an unexpected exception (cell_failed)
  bad_output           -> a reply that breaks the output schema
  hang                 -> never returns
  segfault             -> dereferences NULL (native only: no ctypes in wasm)
  where                -> pid, interpreter and whether numpy imports
  allocate {mb}        -> holds mb MiB for the message (MemoryError past
                          the cell's memory limit)
  state_set {key, value}, state_get {key}, state_incr {key}
                       -> the cell's key-value state
  sleep {ms}           -> waits that long, then replies
"""

import os
import sys
import time

from cbs_cell import Context, InvalidInput


class Faulty:
    """A class handler: made once per worker process or component instance."""

    def __init__(self) -> None:
        self.handled = 0

    def handle(self, payload: dict, ctx: Context) -> dict:
        self.handled += 1
        action = payload["action"]
        if action == "shout":
            ctx.log.info("shouting %d characters", len(payload["text"]))
            return {"text": payload["text"].upper() + "!"}
        if action == "stats":
            values = payload["values"]
            if not values:
                raise InvalidInput("values is empty", {"field": "values"})
            return {"value": {"count": len(values), "sum": sum(values), "mean": sum(values) / len(values)}}
        if action == "call":
            return {"value": ctx.request(payload["cell"], payload["payload"])}
        if action == "publish":
            ctx.publish(payload["subject"], payload["payload"])
            return {"value": True}
        if action == "fail":
            raise InvalidInput(payload["message"])
        if action == "raise":
            raise ValueError(payload["message"])
        if action == "allocate":
            return {"value": len(bytearray(payload["mb"] << 20)) >> 20}
        if action == "state_set":
            ctx.state.set(payload["key"], payload["value"])
            return {"value": True}
        if action == "state_get":
            value = ctx.state.get(payload["key"])
            return {"value": None if value is None else value.decode()}
        if action == "state_incr":
            return {"value": ctx.state.increment(payload["key"])}
        if action == "sleep":
            time.sleep(payload["ms"] / 1000)
            return {"value": payload["ms"]}
        if action == "bad_output":
            return {"unexpected": True}
        if action == "hang":
            while True:
                pass
        if action == "segfault":
            import ctypes

            ctypes.string_at(0)
        if action == "where":
            try:
                import numpy

                numpy_version = numpy.__version__
            except ImportError:
                numpy_version = None
            return {
                "value": {
                    "pid": os.getpid(),
                    "version": sys.version.split()[0],
                    "prefix": sys.prefix,
                    "numpy": numpy_version,
                    "handled": self.handled,
                }
            }
        raise InvalidInput(f"unknown action {action!r}")
