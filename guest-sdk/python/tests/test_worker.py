"""The SDK's native runtime over real pipes, and its error mapping."""

import json
import os
import struct
import sys
import threading
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cbs_cell import CellError, Context, InvalidInput, NotFound, resolve  # noqa: E402
from cbs_cell.worker import Channel, Worker, handshake  # noqa: E402


def greet(payload, ctx):
    if payload.get("name") == "":
        raise InvalidInput("name is empty", {"field": "name"})
    if payload.get("boom"):
        raise RuntimeError("boom")
    if payload.get("call"):
        return {"via": ctx.request("logic.greet", {"name": payload["call"]})}
    ctx.log.info("greeting %s", payload["name"])
    return {"greeting": f"Hello, {payload['name']}!"}


async def agreet(payload, ctx):
    if payload.get("name") == "":
        raise InvalidInput("name is empty")
    if payload.get("boom"):
        raise RuntimeError("boom")
    if payload.get("call"):
        return {"via": await ctx.request("logic.greet", {"name": payload["call"]})}
    if payload.get("count"):
        return {"n": await ctx.state.increment("n")}
    return {"greeting": f"Hello, {payload['name']}!"}


class Counter:
    def __init__(self):
        self.n = 0

    def handle(self, payload, ctx):
        self.n += 1
        return {"n": self.n}


def not_finite(payload, ctx):
    if payload.get("details"):
        raise InvalidInput("bad number", {"value": float("nan")})
    if payload.get("call"):
        return {"via": ctx.request("logic.greet", {"value": float("inf")})}
    if payload.get("inf"):
        return {"mean": float("inf")}
    if payload.get("circular"):
        loop = {}
        loop["self"] = loop
        return loop
    return {"mean": 1.5}


def _not_json(constant):
    raise ValueError(f"the worker wrote {constant}, which is not JSON")


class Host:
    """The host's end of the pipes: writes frames, reads frames."""

    def __init__(self, handler, threads=1, log_level="trace"):
        to_worker_r, self.to_worker_w = os.pipe()
        self.from_worker_r, from_worker_w = os.pipe()
        self.w = os.fdopen(self.to_worker_w, "wb")
        self.r = os.fdopen(self.from_worker_r, "rb")
        channel = Channel(to_worker_r, from_worker_w)
        self.send({"type": "hello", "protocol": {"min": 1, "max": 1}, "max_frame_bytes": 65536,
                   "cell": {"id": "test.cell", "version": "1.0"}, "log_level": log_level})
        self.described = None

        def worker():
            hello = handshake(channel, {})
            Worker.for_hello(channel, resolve(handler), hello, threads).serve()
            os.close(from_worker_w)

        self.thread = threading.Thread(target=worker, daemon=True)
        self.thread.start()
        self.described = self.recv()

    def send(self, frame):
        body = json.dumps(frame).encode()
        self.w.write(struct.pack(">I", len(body)) + body)
        self.w.flush()

    def recv(self):
        head = self.r.read(4)
        if len(head) < 4:
            return None
        (n,) = struct.unpack(">I", head)
        # As strict as the host: NaN and Infinity are not JSON.
        return json.loads(self.r.read(n), parse_constant=_not_json)

    def handle(self, hid, payload):
        self.send({"type": "handle", "id": hid, "deadline_ms": 1000,
                   "envelope": {"id": "m", "correlation_id": "c1", "payload": payload}})

    def reply(self, hid):
        while True:
            frame = self.recv()
            if frame["type"] == "reply" and frame["id"] == hid:
                return frame
            self.others.append(frame)

    others: list = []

    def close(self):
        self.send({"type": "shutdown", "grace_ms": 1000})
        self.thread.join(5)
        self.w.close()
        self.r.close()


class WorkerTest(unittest.TestCase):
    def test_handshake_names_the_cell(self):
        host = Host(greet)
        self.assertEqual(host.described["type"], "describe")
        self.assertEqual(host.described["protocol"], 1)
        self.assertEqual(host.described["cell"], {"id": "test.cell", "version": "1.0"})
        host.close()

    def test_replies_typed_errors_and_exceptions(self):
        host = Host(greet)
        host.others = []
        host.handle(1, {"name": "Ada"})
        self.assertEqual(host.reply(1)["payload"], {"greeting": "Hello, Ada!"})
        host.handle(2, {"name": ""})
        self.assertEqual(host.reply(2)["error"],
                         {"code": "invalid_input", "message": "name is empty", "details": {"field": "name"}})
        host.handle(3, {"name": "x", "boom": True})
        error = host.reply(3)["error"]
        self.assertEqual(error["code"], "cell_failed")
        self.assertNotIn("Traceback", error["message"])
        logs = [f for f in host.others if f["type"] == "log"]
        self.assertTrue(any("Traceback" in f["message"] and f["parent"] == 3 for f in logs), logs)
        self.assertTrue(any(f["message"] == "greeting Ada" for f in logs), logs)
        host.close()

    def test_calls_go_through_the_host_and_pings_are_answered(self):
        host = Host(greet)
        host.others = []
        host.handle(7, {"call": "Bob"})
        request = host.recv()
        self.assertEqual(request["type"], "request")
        self.assertEqual((request["parent"], request["cell"]), (7, "logic.greet"))
        host.send({"type": "ping", "id": 99})
        self.assertEqual(host.recv(), {"type": "pong", "id": 99})
        host.send({"type": "response", "id": request["id"], "payload": {"greeting": "Hello, Bob!"}})
        self.assertEqual(host.reply(7)["payload"], {"via": {"greeting": "Hello, Bob!"}})
        host.handle(8, {"call": "Nobody"})
        request = host.recv()
        host.send({"type": "response", "id": request["id"],
                   "error": {"code": "not_found", "message": "nobody serves logic.greet"}})
        # An uncaught typed error of a call passes through as it is.
        self.assertEqual(host.reply(8)["error"]["code"], "not_found")
        host.close()

    def test_logs_below_the_hosts_level_are_not_sent(self):
        host = Host(greet, log_level="warn")
        host.others = []
        host.handle(1, {"name": "x", "boom": True})  # an error line: sent
        host.reply(1)
        host.handle(2, {"name": "Ada"})  # an info line: dropped
        host.reply(2)
        levels = [f["level"] for f in host.others if f["type"] == "log"]
        self.assertEqual(levels, ["error"])
        host.close()

    def test_many_handler_threads(self):
        host = Host(greet, threads=3)
        host.others = []
        host.handle(1, {"call": "Eve"})
        request = host.recv()
        host.handle(2, {"name": "Ada"})  # served while 1 waits for its call
        self.assertEqual(host.reply(2)["payload"], {"greeting": "Hello, Ada!"})
        host.send({"type": "response", "id": request["id"], "payload": {"greeting": "Hi Eve"}})
        self.assertEqual(host.reply(1)["payload"], {"via": {"greeting": "Hi Eve"}})
        host.close()

    def test_handles_during_a_call_wait_and_batches_flow(self):
        host = Host(greet)
        host.others = []
        host.handle(1, {"call": "Eve"})
        request = host.recv()
        for i in range(2, 52):  # arrive while 1 waits: kept, answered after
            host.handle(i, {"name": str(i)})
        host.send({"type": "response", "id": request["id"], "payload": {"greeting": "Hi Eve"}})
        self.assertEqual(host.reply(1)["payload"], {"via": {"greeting": "Hi Eve"}})
        for i in range(2, 52):
            self.assertEqual(host.reply(i)["payload"], {"greeting": f"Hello, {i}!"})
        host.close()

    def test_a_class_handler_is_made_once(self):
        host = Host(Counter)
        host.others = []
        for i in (1, 2, 3):
            host.handle(i, {})
            self.assertEqual(host.reply(i)["payload"], {"n": i})
        host.close()


def big(payload, ctx):
    if payload.get("null_call"):
        return ctx.request("logic.greet", None)
    return {"text": "x" * payload["n"]}


class LimitsTest(unittest.TestCase):
    def test_a_reply_over_the_frame_limit_is_cell_failed(self):
        host = Host(big)  # max_frame_bytes 65536
        host.others = []
        host.handle(1, {"n": 100_000})
        error = host.reply(1)["error"]
        self.assertEqual(error["code"], "cell_failed")
        self.assertIn("more than the host takes", error["message"])
        host.handle(2, {"n": 10})
        self.assertEqual(host.reply(2)["payload"], {"text": "x" * 10}, "the worker serves on")
        host.close()

    def test_a_null_payload_call_is_invalid_input_in_the_sdk(self):
        host = Host(big)
        host.others = []
        host.handle(1, {"null_call": True})
        reply = host.reply(1)
        self.assertEqual(reply["error"]["code"], "invalid_input")
        self.assertFalse([f for f in host.others if f["type"] == "request"], "nothing sent")
        host.close()


class StrictJsonTest(unittest.TestCase):
    """Python writes NaN and Infinity, which no JSON parser takes: a host
    would end the worker for the malformed frame."""

    def test_an_infinite_number_in_a_reply_is_a_contract_violation(self):
        host = Host(not_finite)
        host.others = []
        host.handle(1, {"inf": True})
        error = host.reply(1)["error"]
        self.assertEqual(error["code"], "contract_violation")
        self.assertIn("NaN or infinite", error["message"])
        host.handle(2, {})
        self.assertEqual(host.reply(2)["payload"], {"mean": 1.5}, "the worker serves on")
        host.close()

    def test_a_circular_reply_is_a_contract_violation_without_the_number_hint(self):
        host = Host(not_finite)
        host.others = []
        host.handle(1, {"circular": True})
        error = host.reply(1)["error"]
        self.assertEqual(error["code"], "contract_violation")
        self.assertIn("Circular reference", error["message"])
        self.assertNotIn("NaN", error["message"])
        host.close()

    def test_error_details_that_are_not_json_are_left_out(self):
        host = Host(not_finite)
        host.others = []
        host.handle(1, {"details": True})
        error = host.reply(1)["error"]
        self.assertEqual(error["code"], "invalid_input")
        self.assertNotIn("details", error)
        self.assertIn("bad number (its details are not JSON", error["message"])
        host.close()

    def test_a_call_with_an_infinite_number_fails_in_the_cell_and_sends_nothing(self):
        host = Host(not_finite)
        host.others = []
        host.handle(1, {"call": True})
        error = host.reply(1)["error"]
        self.assertEqual(error["code"], "cell_failed")
        self.assertIn("not JSON compliant", error["message"])
        self.assertFalse([f for f in host.others if f["type"] == "request"], "nothing sent")
        host.close()


class AsyncWorkerTest(unittest.TestCase):
    def test_async_messages_run_at_once_on_one_loop(self):
        host = Host(agreet, threads=4)
        host.others = []
        host.handle(1, {"call": "Eve"})
        request = host.recv()
        self.assertEqual((request["type"], request["parent"]), ("request", 1))
        host.handle(2, {"name": "Ada"})  # runs while 1 awaits its call
        self.assertEqual(host.reply(2)["payload"], {"greeting": "Hello, Ada!"})
        host.send({"type": "response", "id": request["id"], "payload": {"greeting": "Hi Eve"}})
        self.assertEqual(host.reply(1)["payload"], {"via": {"greeting": "Hi Eve"}})
        host.close()

    def test_async_state_and_errors(self):
        host = Host(agreet, threads=2)
        host.others = []
        host.handle(1, {"count": True})
        state = host.recv()
        self.assertEqual((state["type"], state["op"], state["key"]), ("state", "increment", "n"))
        host.send({"type": "response", "id": state["id"], "payload": {"value": 3}})
        self.assertEqual(host.reply(1)["payload"], {"n": 3})
        host.handle(2, {"name": ""})
        self.assertEqual(host.reply(2)["error"]["code"], "invalid_input")
        host.handle(3, {"name": "x", "boom": True})
        self.assertEqual(host.reply(3)["error"]["code"], "cell_failed")
        host.close()

    def test_at_most_threads_async_messages_run_at_once(self):
        host = Host(agreet, threads=1)
        host.others = []
        host.handle(1, {"call": "Eve"})
        request = host.recv()
        host.handle(2, {"call": "Bob"})  # waits: one at a time
        # Two ping rounds: by the second, the loop has run every task it
        # could; message 2 would have sent its request before the pong.
        for ping in (5, 6):
            host.send({"type": "ping", "id": ping})
            self.assertEqual(host.recv(), {"type": "pong", "id": ping}, "nothing from message 2 yet")
        host.send({"type": "response", "id": request["id"], "payload": {"greeting": "Hi"}})
        self.assertEqual(host.reply(1)["payload"], {"via": {"greeting": "Hi"}})
        second = host.recv()
        self.assertEqual((second["type"], second["parent"]), ("request", 2))
        host.send({"type": "response", "id": second["id"], "payload": {"greeting": "Hi Bob"}})
        self.assertEqual(host.reply(2)["payload"], {"via": {"greeting": "Hi Bob"}})
        host.close()

    def test_shutdown_lets_a_call_in_flight_finish(self):
        host = Host(agreet, threads=2)
        host.others = []
        host.handle(1, {"call": "Eve"})
        request = host.recv()
        host.send({"type": "shutdown", "grace_ms": 1000})
        host.send({"type": "response", "id": request["id"], "payload": {"greeting": "Hi"}})
        self.assertEqual(host.reply(1)["payload"], {"via": {"greeting": "Hi"}})
        host.thread.join(5)
        self.assertFalse(host.thread.is_alive(), "the worker returned")
        host.w.close()
        host.r.close()


class ErrorsTest(unittest.TestCase):
    def test_wire_round_trip(self):
        e = CellError.from_wire({"code": "not_found", "message": "m", "details": '{"a": 1}'})
        self.assertIsInstance(e, NotFound)
        self.assertEqual(e.details, {"a": 1})
        self.assertEqual(e.to_wire(), {"code": "not_found", "message": "m", "details": {"a": 1}})
        self.assertEqual(CellError.from_wire({"code": "weird", "message": "m"}).code, "internal")
        self.assertEqual(CellError("m", code="capacity").code, "capacity")
        with self.assertRaises(ValueError):
            CellError("m", code="nope")

    def test_the_time_left_counts_down_from_the_deadline(self):
        from cbs_cell.testing import TestContext

        self.assertIsNone(TestContext().remaining_ms(), "no deadline, none said")
        left = TestContext(deadline_ms=5000).remaining_ms()
        self.assertTrue(4000 < left <= 5000, left)
        self.assertEqual(TestContext(deadline_ms=-10).remaining_ms(), 0)

    def test_context_is_abstract(self):
        with self.assertRaises(TypeError):
            Context("x", {})  # type: ignore[abstract]


if __name__ == "__main__":
    unittest.main()
