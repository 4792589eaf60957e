"""The benchmark's reference: a hand-written nats-py service doing the same
work as test.py_faulty (the same handler source, tests/cells/py-faulty),
without CBS. Usage: nats_py_service.py NATS_URL SUBJECT [--checked];
prints "ready". With --checked it validates each request and reply payload
against the cell's JSON Schemas (Python's jsonschema, validators compiled
once), as the host does; without, it skips those checks."""

import asyncio
import json
import logging
import sys
import uuid
from pathlib import Path

import nats
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "guest-sdk" / "python"), str(ROOT / "tests" / "cells" / "py-faulty")]
from cbs_cell import CellError  # noqa: E402
from faulty import Faulty  # noqa: E402

cell = Faulty()
SCHEMAS = ROOT / "tests" / "cells" / "py-faulty" / "schemas"


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


class Log:
    """Where a plain service's logs go: Python's logging, below its level."""

    def __init__(self) -> None:
        self._log = logging.getLogger("bench.natspy")

    def info(self, message, *args):
        self._log.info(message, *args)


class NoContext:
    """The handler's context: only what the benchmarked action uses."""

    cell_id = "bench.natspy"
    log = Log()


async def main(url: str, subject: str, checked: bool) -> None:
    nc = await nats.connect(url)
    check_in, check_out = validator("input.json"), validator("output.json")

    async def on_message(msg):
        request = json.loads(msg.data)
        reply = {
            "v": 1,
            "id": str(uuid.uuid4()),
            "correlation_id": request["correlation_id"],
            "causation_id": request["id"],
            "subject": request["subject"],
            "headers": {},
        }
        try:
            if checked and not check_in.is_valid(request["payload"]):
                raise CellError("the payload does not match the input schema", code="invalid_input")
            reply["payload"] = cell.handle(request["payload"], NoContext())
            if checked and not check_out.is_valid(reply["payload"]):
                raise CellError("the reply does not match the output schema", code="contract_violation")
        except CellError as e:
            reply["payload"] = None
            reply["error"] = e.to_wire()
        await msg.respond(json.dumps(reply).encode())

    await nc.subscribe(subject, queue=subject, cb=on_message)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], "--checked" in sys.argv[3:]))
