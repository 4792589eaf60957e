#!/usr/bin/env python3
"""Reference sidecar: the CBS sidecar protocol v1 in standard-library Python.

It exists so that the host side of the protocol is tested for real, and as a
readable second implementation of docs/sidecar-protocol.md. It handles
several messages at once (a thread each) and misbehaves on request, for the
host's failure tests. Actions (the payload's "action"):

  shout {text}         -> {"text": TEXT + "!"}
  echo {value}         -> {"value": value}
  pid                  -> {"pid": this process id}
  env                  -> {"env": this process's environment}
  stderr {hex}         -> writes those bytes to stderr
  stderr_flood {mb}    -> writes mb MiB to stderr without a line break
  log_lines {n}        -> writes n lines to stderr
  spin {seconds}       -> burns that much CPU time, then replies
  sleep {ms}           -> waits that long, then replies
  allocate {mb}        -> holds mb MiB for the message; out of memory, it
                          exits with status 70 (its state is unknown then)
  gather {n}           -> waits until n messages are in flight at once
  call {cell, payload} -> requests another cell through the host
  publish {subject, payload}
  fail {message}       -> a typed invalid_input error
  crash                -> exits at once, mid-message
  hang                 -> never replies
  garbage              -> writes a frame that is not JSON
  fail_with_details {message, details} -> invalid_input with details
  raise {message}      -> raises an untyped exception (cell_failed)
  not_json             -> returns what JSON cannot encode (contract_violation)
  call_null {cell}     -> requests a cell with a null payload (refused here)
  big {bytes}          -> a reply of about that size (cell_failed when over
                          the host's max_frame_bytes)
  deadline {deadline_ms} -> whether the time left is within (0, deadline_ms]
  log                  -> a log frame at debug, info, warn and error (those
                          below the hello's log_level are not sent)
  oversize             -> announces a frame larger than allowed

Environment: REF_PROTOCOL="min-max" (default "1-1") sets the versions it
speaks; REF_NEWER_AT=<file> counts starts in <file> and makes the second
start speak only version 2 (a restart that comes back newer, once);
REF_EVENTS=<file> gets a line "start PID" when it starts and "shutdown PID"
when the host's shutdown frame arrives.
"""

import json
import os
import struct
import sys
import threading
import time

PROTOCOL = (1, 1)
lock = threading.Lock()          # one writer at a time on stdout
out = sys.stdout.buffer
inp = sys.stdin.buffer
pending = {}                     # outbound request id -> [event, response]
next_id = [0]
active = [0]
peak = [0]                       # most messages ever in flight at once
active_cv = threading.Condition()
settings = {"max_frame": 1 << 20, "log_rank": 0, "cell": "test.reference"}
RANK = {"trace": 0, "debug": 1, "info": 2, "warn": 3, "error": 4, "off": 5}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def write(frame):
    body = json.dumps(frame).encode()
    with lock:
        out.write(struct.pack(">I", len(body)) + body)
        out.flush()


def read():
    head = inp.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    if n > settings["max_frame"]:
        log(f"oversize frame: {n} bytes, at most {settings['max_frame']}")
        return None
    return json.loads(inp.read(n))


def call_host(kind, parent, **fields):
    """Sends a request/publish frame and waits for its response."""
    with lock:
        next_id[0] += 1
        rid = next_id[0]
    slot = [threading.Event(), None]
    pending[rid] = slot
    write(dict(type=kind, id=rid, parent=parent, **fields))
    slot[0].wait()
    response = pending.pop(rid)[1]
    if "error" in response:
        raise HostError(response["error"])
    return response.get("payload")


class HostError(Exception):
    def __init__(self, error):
        super().__init__(error["message"])
        self.error = error


def reply(hid, result):
    """The reply, or cell_failed when it is over the host's frame limit, or
    contract_violation when JSON cannot encode it."""
    try:
        body = json.dumps({"type": "reply", "id": hid, "payload": result}).encode()
    except (TypeError, ValueError) as e:
        return write({"type": "reply", "id": hid, "error": {"code": "contract_violation", "message": f"the reply is not JSON: {e}"}})
    if len(body) > settings["max_frame"]:
        message = f"the reply is {len(body)} bytes, more than the host takes ({settings['max_frame']})"
        return write({"type": "reply", "id": hid, "error": {"code": "cell_failed", "message": message}})
    with lock:
        out.write(struct.pack(">I", len(body)) + body)
        out.flush()


def log_frame(hid, level, message):
    if RANK[level] >= settings["log_rank"]:
        write({"type": "log", "level": level, "message": message, "parent": hid})


def handle(frame):
    arrived = time.monotonic()
    hid = frame["id"]
    payload = frame["envelope"]["payload"]
    action = payload.get("action", "shout" if "text" in payload else "echo")
    with active_cv:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        active_cv.notify_all()
    try:
        if action == "shout":
            result = {"text": payload["text"].upper() + "!"}
        elif action == "echo":
            result = {"value": payload.get("value")}
        elif action == "stderr_flood":
            chunk = b"x" * (1 << 20)
            for _ in range(payload["mb"]):
                os.write(2, chunk)
            result = {"written": os.write(2, b"\n")}
        elif action == "log_lines":
            for i in range(payload["n"]):
                log(f"line {i} of {payload['n']}")
            result = {"value": payload["n"]}
        elif action == "spin":
            until = time.process_time() + payload["seconds"]
            while time.process_time() < until:
                pass
            result = {"value": payload["seconds"]}
        elif action == "sleep":
            time.sleep(payload["ms"] / 1000)
            result = {"value": payload["ms"]}
        elif action == "allocate":
            try:
                held = bytearray(payload["mb"] << 20)
            except MemoryError:
                log("out of memory")
                os._exit(70)
            result = {"value": len(held) >> 20}
        elif action == "stderr":
            result = {"written": os.write(2, bytes.fromhex(payload["hex"]))}
        elif action == "env":
            result = {"env": dict(os.environ)}
        elif action == "pid":
            result = {"pid": os.getpid()}
        elif action == "gather":
            with active_cv:
                ok = active_cv.wait_for(lambda: peak[0] >= payload["n"], timeout=20)
            if not ok:
                raise HostError({"code": "internal", "message": f"only {peak[0]} in flight at once"})
            result = {"value": payload["n"]}
        elif action == "call":
            result = {"value": call_host("request", hid, cell=payload["cell"], payload=payload["payload"])}
        elif action == "publish":
            call_host("publish", hid, subject=payload["subject"], payload=payload["payload"])
            result = {"value": True}
        elif action == "fail":
            raise HostError({"code": "invalid_input", "message": payload["message"]})
        elif action == "fail_with_details":
            raise HostError({"code": "invalid_input", "message": payload["message"], "details": payload["details"]})
        elif action == "raise":
            raise RuntimeError(payload["message"])
        elif action == "not_json":
            result = {"value": {1, 2}}
        elif action == "call_null":
            raise HostError({"code": "invalid_input", "message": f"a request to {payload['cell']} needs a payload: null is not one"})
        elif action == "big":
            result = {"value": "x" * payload["bytes"]}
        elif action == "deadline":
            left = frame["deadline_ms"] - (time.monotonic() - arrived) * 1000
            result = {"value": {"within": 0 < left <= payload["deadline_ms"]}}
        elif action == "log":
            for level in ("debug", "info", "warn", "error"):
                log_frame(hid, level, f"a {level} line")
            result = {"value": "logged"}
        elif action == "crash":
            log("crashing on purpose")
            os._exit(3)
        elif action == "hang":
            threading.Event().wait()
        elif action == "garbage":
            with lock:
                out.write(struct.pack(">I", 8) + b"not json")
                out.flush()
            return
        elif action == "oversize":
            with lock:
                out.write(struct.pack(">I", 64 << 20) + b"{")
                out.flush()
            return
        else:
            raise HostError({"code": "invalid_input", "message": f"unknown action {action!r}"})
        reply(hid, result)
    except HostError as e:
        write({"type": "reply", "id": hid, "error": e.error})
    except Exception as e:  # the SDKs' rule: any other exception is cell_failed
        log(f"the handler raised {type(e).__name__}: {e}")
        message = f"cell {settings['cell']} raised {type(e).__name__}: {e}"
        write({"type": "reply", "id": hid, "error": {"code": "cell_failed", "message": message}})
    finally:
        with active_cv:
            active[0] -= 1


def speaks():
    lo, hi = (int(v) for v in os.environ.get("REF_PROTOCOL", "1-1").split("-"))
    counter = os.environ.get("REF_NEWER_AT")
    if counter:
        starts = int(open(counter).read() or 0) + 1 if os.path.exists(counter) else 1
        with open(counter, "w") as f:
            f.write(str(starts))
        if starts == 2:
            return (2, 2)
    return (lo, hi)


def event(what):
    path = os.environ.get("REF_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{what} {os.getpid()}\n")


def main():
    event("start")
    # REF_SLOW_START_MS: a slow start, for readiness tests.
    time.sleep(int(os.environ.get("REF_SLOW_START_MS", "0")) / 1000)
    hello = read()
    if not hello or hello.get("type") != "hello":
        log("expected hello, got", hello)
        return 2
    lo, hi = speaks()
    settings["max_frame"] = int(hello.get("max_frame_bytes", 1 << 20))
    settings["log_rank"] = RANK.get(hello.get("log_level", "trace"), 0)
    settings["cell"] = os.environ.get("CBS_CELL_ID", "test.reference")
    offered = hello["protocol"]
    version = min(hi, offered["max"])
    if version < max(lo, offered["min"]):
        version = lo  # no common version: say ours; the host will refuse it
    write({"type": "describe", "protocol": version,
           "cell": {"id": os.environ.get("CBS_CELL_ID", "test.reference"), "version": "0.1.0"}})
    log(f"reference sidecar {os.getpid()} up, protocol {version}")
    while True:
        frame = read()
        if frame is None:
            return 0
        kind = frame.get("type")
        if kind == "handle":
            threading.Thread(target=handle, args=(frame,), daemon=True).start()
        elif kind == "response":
            slot = pending.get(frame["id"])
            if slot:
                slot[1] = frame
                slot[0].set()
        elif kind == "ping":
            write({"type": "pong", "id": frame["id"]})
        elif kind == "shutdown":
            event("shutdown")
            return 0


if __name__ == "__main__":
    sys.exit(main())
