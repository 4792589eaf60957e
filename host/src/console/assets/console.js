// The CBS console: reads one view's data from /events/<view> (server-sent
// events, one snapshot a second) and draws it. Text goes in with
// textContent only: names and errors from the lattice never become markup.
"use strict";

const view = document.getElementById("view");
const status = document.getElementById("status");
const updated = document.getElementById("updated");

// Builds an element: el("td", {class: "num"}, "3", child, …).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Draws the view: its parts in place of what it showed, lists flattened,
// absent ones (null) left out (replaceChildren would write "null").
function show(...parts) {
  view.replaceChildren(...parts.flat().filter((p) => p !== null && p !== undefined));
}

function table(headers, rows, caption) {
  return el("table", {},
    caption ? el("caption", { class: "muted" }, caption) : null,
    el("thead", {}, el("tr", {}, headers.map(([label, cls]) => el("th", { class: cls, scope: "col" }, label)))),
    el("tbody", {}, rows));
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind || ""}` }, text);
}

function cellLink(id) {
  return el("a", { href: `/cells/${encodeURIComponent(id)}` }, id);
}

// Rates from two snapshots: requests/s by key.
let previous = null;
function rate(key, count, at) {
  const before = previous && previous.counts.get(key);
  if (!before || at <= previous.at) return null;
  return Math.max(0, (count - before) * 1000 / (at - previous.at));
}
function remember(at, counts) {
  previous = { at, counts };
}
function fmtRate(r) {
  return r === null ? "…" : r.toFixed(r < 10 ? 1 : 0);
}

// `3 h 12 min`, `45 s`: how long from `ms` to `now`.
function fmtUptime(ms, now) {
  const s = Math.max(0, Math.floor((now - ms) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function none(text) {
  return el("span", { class: "muted" }, text || "–");
}

// The NATS server a host is on: its name and version (its id on hover).
function natsServer(server) {
  if (!server) return none();
  const name = server.name === server.id ? server.id.slice(0, 12) : server.name;
  return el("span", { title: `server id ${server.id}` }, name, " ", el("span", { class: "muted" }, `v${server.version}`));
}

// A host's load across its cells: messages in flight, and its busy
// running slots of all it has; null when no cell reports them.
function hostLoad(cells) {
  const reporting = cells.filter((c) => c.workers);
  if (!reporting.length) return null;
  const sum = (key) => reporting.reduce((n, c) => n + c.workers[key], 0);
  return { inFlight: sum("in_flight"), busy: sum("busy"), slots: sum("concurrency") };
}

function drawLattice(data) {
  const counts = new Map();
  const hostRows = data.hosts.map((host) => {
    let requests = 0;
    let errors = 0;
    for (const c of host.cells) { requests += c.requests; errors += c.errors; }
    counts.set(`host:${host.id}`, requests);
    const labels = Object.entries(host.labels).map(([k, v]) => badge(`${k}=${v}`));
    const load = hostLoad(host.cells);
    return el("tr", { "data-host": host.id },
      el("th", { scope: "row" }, host.id),
      el("td", {}, labels),
      el("td", {}, host.watching ? badge("watching", "ok") : none("static")),
      el("td", { class: "num", "data-uptime": host.id }, host.started_ms ? fmtUptime(host.started_ms, data.at_ms) : none()),
      el("td", { "data-nats": host.id }, data.source === "nats" ? natsServer(host.nats_server) : none("in process")),
      el("td", { class: "num" }, host.cells.length),
      el("td", { class: "num", "data-rate": `host:${host.id}` }, fmtRate(rate(`host:${host.id}`, requests, data.at_ms))),
      el("td", { class: "num" }, load ? load.inFlight : none()),
      el("td", { class: "num", "data-slots": host.id }, load ? `${load.busy} / ${load.slots}` : none()),
      el("td", { class: "num" }, host.load_avg_1m === null || host.load_avg_1m === undefined ? none() : host.load_avg_1m.toFixed(2)),
      el("td", { class: "num" }, errors));
  });
  const cellRows = data.cells.map((cell) => {
    const serving = cell.serving.map((r) => badge(`${r.host} ${r.version}`, cell.desired && r.version !== cell.desired ? "warn" : ""));
    const state = [];
    if (cell.drift) state.push(badge("drift", "warn"));
    if (cell.unplaced) state.push(badge(`unplaced: ${cell.unplaced}`, "bad"));
    return el("tr", { class: cell.drift ? "drift" : null, "data-cell": cell.id },
      el("td", {}, cellLink(cell.id)),
      el("td", {}, cell.desired || el("span", { class: "muted" }, "not deployed")),
      el("td", { class: "num" }, cell.replicas === null ? (cell.desired ? "all" : "") : cell.replicas),
      el("td", { class: "num" }, cell.serving.length),
      el("td", {}, serving),
      el("td", {}, state));
  });
  remember(data.at_ms, counts);
  show(
    el("h1", {}, data.source === "nats" ? "Lattice" : "Host"),
    el("h2", { id: "hosts" }, `Hosts (${data.hosts.length})`),
    table([["Host"], ["Labels"], ["Follows"], ["Up", "num"], ["NATS server"], ["Cells", "num"], ["Requests/s", "num"],
      ["In flight", "num"], ["Busy slots", "num"], ["Load (1 min)", "num"], ["Errors", "num"]], hostRows,
      "Up: since the host started. In flight and busy slots: across its cells, of their running slots. Load: the machine's 1-minute load average."),
    el("h2", { id: "cells" }, `Cells (${data.cells.length})`),
    table([["Cell"], ["Desired"], ["Replicas", "num"], ["Serving", "num"], ["Hosts and versions"], ["State"]], cellRows));
}

// A JSON Schema, readably: each property with its type, whether required,
// and its constraints; anything else as indented JSON.
function schemaTree(schema) {
  if (schema === null || schema === undefined) return el("p", { class: "muted" }, "none declared");
  if (typeof schema === "string") return el("p", {}, el("code", {}, schema));
  if (schema.type !== "object" || !schema.properties) return el("pre", {}, JSON.stringify(schema, null, 2));
  const required = new Set(schema.required || []);
  const items = Object.entries(schema.properties).map(([name, prop]) => {
    const facts = [];
    for (const key of ["type", "format", "minimum", "maximum", "minLength", "maxLength", "pattern"]) {
      if (prop[key] !== undefined) facts.push(`${key} ${JSON.stringify(prop[key])}`);
    }
    if (prop.enum) facts.push(`one of ${prop.enum.map((v) => JSON.stringify(v)).join(", ")}`);
    return el("li", {}, el("code", {}, name), " ", required.has(name) ? badge("required") : badge("optional"),
      " ", el("span", { class: "muted" }, facts.join(" · ")),
      prop.description ? el("div", { class: "muted" }, prop.description) : null,
      prop.type === "object" && prop.properties ? schemaTree(prop) : null);
  });
  return el("ul", { class: "schema" }, items);
}

// The q-quantile (0 to 1) of the messages between two readings of a
// latency histogram (`counts` per bucket, the last past every bound, µs):
// in the bucket that holds it, linearly within. `{us, over}` (`over`: past
// the last bound, `us` is that bound), or null without messages or when
// the counters started again (a new version).
function percentile(bounds, before, after, q) {
  if (before.length !== after.length || after.length !== bounds.length + 1) return null;
  const counts = after.map((n, i) => n - before[i]);
  if (counts.some((n) => n < 0)) return null;
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] > 0 && seen + counts[i] >= rank) {
      if (i === bounds.length) return { us: bounds[i - 1], over: true };
      const low = i === 0 ? 0 : bounds[i - 1];
      return { us: low + ((bounds[i] - low) * (rank - seen)) / counts[i], over: false };
    }
    seen += counts[i];
  }
  return null;
}

// The cell's readings over the last LATENCY_WINDOW_MS, oldest first: the
// newest one at or before the window's start, and every one after.
const LATENCY_WINDOW_MS = 10000;
const latencyReadings = [];
function latencyBase(data) {
  const newest = latencyReadings[latencyReadings.length - 1];
  if (!newest || newest.at < data.at_ms) {
    latencyReadings.push({ at: data.at_ms, hosts: new Map(data.hosts.map((h) => [h.host, h])) });
  }
  while (latencyReadings.length > 2 && latencyReadings[1].at <= data.at_ms - LATENCY_WINDOW_MS) latencyReadings.shift();
  return latencyReadings[0].at < data.at_ms ? latencyReadings[0] : null;
}

// p50 and p99 of a host's copy over the window: undefined before there
// are two readings, null when they cannot be compared or saw no message.
function hostPercentiles(base, h) {
  if (!base || !h.latency) return { p50: undefined, p99: undefined };
  const then = base.hosts.get(h.host);
  const same = then && then.latency && then.version === h.version
    && then.latency.bounds_us.join() === h.latency.bounds_us.join();
  if (!same) return { p50: null, p99: null };
  const at = (q) => percentile(h.latency.bounds_us, then.latency.counts, h.latency.counts, q);
  return { p50: at(0.5), p99: at(0.99) };
}

function fmtPercentile(p) {
  if (p === undefined) return "…";
  if (p === null) return "–";
  return `${p.over ? "> " : ""}${(p.us / 1000).toFixed(2)}`;
}

function drawCell(data) {
  const counts = new Map();
  const base = latencyBase(data);
  const rows = data.hosts.map((h) => {
    counts.set(h.host, h.requests);
    const codes = Object.entries(h.errors_by_code).map(([code, n]) => badge(`${code} ${n}`, "bad"));
    const durable = h.durable
      ? `lag ${h.durable.lag} · redelivered ${h.durable.redelivered} · dead letters ${h.durable.dead_lettered}`
      : "";
    const { p50, p99 } = hostPercentiles(base, h);
    return el("tr", { "data-host": h.host },
      el("th", { scope: "row" }, h.host),
      el("td", {}, h.version, h.canary
        ? [" ", badge(`canary ${h.canary.version}: ${h.canary.share / 100} %, ${h.canary.requests} req, ${h.canary.errors} err`, "warn")]
        : null,
        h.warm ? [" ", badge(`${h.warm} warm`, "ok")] : null,
        h.recording ? [" ", badge("recording", "warn")] : null),
      el("td", { class: "num", "data-rate": h.host }, fmtRate(rate(h.host, h.requests, data.at_ms))),
      el("td", { class: "num", "data-requests": h.host }, h.requests),
      el("td", { class: "num" }, h.errors),
      el("td", {}, codes),
      el("td", { class: "num", "data-p50": h.host }, fmtPercentile(p50)),
      el("td", { class: "num", "data-p99": h.host }, fmtPercentile(p99)),
      el("td", { class: "num" }, (h.latency_us / 1000).toFixed(2)),
      el("td", { class: "num" }, h.instances),
      el("td", {}, durable));
  });
  const workers = data.hosts.filter((h) => h.workers).map((h) => {
    const pool = h.workers.pool;
    return el("tr", { "data-workers": h.host },
      el("th", { scope: "row" }, h.host),
      el("td", { class: "num", "data-busy": h.host }, h.workers.busy),
      el("td", { class: "num", "data-slots": h.host }, h.workers.concurrency),
      el("td", { class: "num" }, h.workers.in_flight),
      el("td", { class: "num" }, pool ? `${pool.live} / ${pool.max}` : none()),
      el("td", { class: "num" }, pool ? pool.messages : none()));
  });
  const breakers = data.hosts.flatMap((h) => Object.entries(h.breakers || {}).map(([target, b]) =>
    el("tr", { "data-breaker": target },
      el("td", {}, h.host), el("td", {}, cellLink(target)),
      el("td", {}, badge(b.state.replace("_", "-"), b.state === "open" ? "bad" : b.state === "closed" ? "ok" : "warn")),
      el("td", { class: "num" }, b.opened))));
  remember(data.at_ms, counts);
  show(
    el("h1", {}, "Cell ", el("code", {}, data.id), data.desired ? el("span", { class: "muted" }, ` desired ${data.desired}`) : null),
    data.rollout ? el("p", { "data-rollout": "" }, "Rollout: ", data.rollout) : null,
    el("h2", {}, "On each host"),
    table([["Host"], ["Version"], ["Requests/s", "num"], ["Requests", "num"], ["Errors", "num"], ["By code"],
      ["p50 ms", "num"], ["p99 ms", "num"], ["Avg ms", "num"], ["Instances", "num"], ["Durable"]], rows,
      `p50 and p99: of the messages handled in the last ${LATENCY_WINDOW_MS / 1000} s. Avg: a moving average of recent messages.`),
    data.hosts.some((h) => h.durable)
      ? el("p", {}, el("a", { href: `/cells/${encodeURIComponent(data.id)}/dead-letters` }, "Dead letters"))
      : null,
    cellActions(data),
    panel,
    drawHistory(data.history),
    el("h2", {}, "Workers"),
    workers.length
      ? table([["Host"], ["Busy", "num"], ["Running slots", "num"], ["In flight", "num"], ["Pool workers", "num"], ["On workers", "num"]], workers,
        "Running slots: messages it runs at once ([limits] concurrency); in flight: running and queued. Pool: a native Python cell's worker processes.")
      : el("p", { class: "muted" }, "not reported"),
    el("h2", {}, "Circuit breakers"),
    breakers.length ? table([["Host"], ["Target"], ["State"], ["Opened", "num"]], breakers) : el("p", { class: "muted" }, "no calls out"),
    el("h2", {}, "Contract: input"),
    schemaTree(data.input),
    el("h2", {}, "Contract: output"),
    schemaTree(data.output));
}

function when(ms) {
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// Actions: on when the console was started with them; the signed-in
// user's token stays in this tab (sessionStorage) and goes in the
// Authorization header, never a cookie.
let actionsEnabled = false;
let releasesEnabled = false;
const session = document.getElementById("session");
function token() {
  return sessionStorage.getItem("cbs-token");
}
function drawSession() {
  if (!actionsEnabled) {
    session.replaceChildren(el("span", { class: "muted" }, "read-only"));
    return;
  }
  if (token()) {
    const out = el("button", { type: "button", id: "sign-out" }, "sign out");
    out.addEventListener("click", () => { sessionStorage.removeItem("cbs-token"); drawSession(); redraw(); });
    session.replaceChildren(el("span", {}, "signed in "), out);
    return;
  }
  const input = el("input", { type: "password", id: "token", "aria-label": "Token", placeholder: "token" });
  const form = el("form", { id: "sign-in" }, input, el("button", { type: "submit" }, "sign in"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value) sessionStorage.setItem("cbs-token", input.value);
    drawSession();
    redraw();
  });
  session.replaceChildren(form);
}
fetch("/api/actions").then((r) => r.json()).then((a) => {
  actionsEnabled = a.enabled;
  releasesEnabled = a.releases;
  drawSession();
  redraw();
});

// POSTs an action; says its outcome in the status line.
async function act(path, body, what) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${token() || ""}` },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  const outcome = response.ok
    ? `${what}: done (${(answer.replayed || []).join(", ")}) by ${answer.by}`
    : `${what} refused: ${answer.detail || response.status}`;
  say(outcome, !response.ok);
  panel.replaceChildren(el("p", { class: response.ok ? "" : "bad" }, outcome));
}

// What a release action did, kept across the view's redraws.
const panel = el("section", { id: "outcome", "aria-live": "polite", "aria-label": "Outcome" });

// Sends a release action (a bundle's bytes, or nothing); returns the
// answer, or shows why it was refused and returns null.
async function release(path, bytes, what) {
  say(`${what}…`);
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/octet-stream", Authorization: `Bearer ${token() || ""}` },
    body: bytes,
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    say(`${what}: ${answer.detail || response.status}`, true);
    panel.replaceChildren(el("p", { class: "bad", id: "refused" }, `${what} refused: ${answer.detail || response.status}`));
    return null;
  }
  say(`${what}: ${answer.result || "checked"}`);
  return answer;
}

function contractView(contract) {
  if (!contract) return null;
  const kind = contract.verdict === "breaking" ? "bad" : contract.verdict === "new_major" ? "warn" : "ok";
  const lines = contract.changes.concat(contract.more ? [`… and ${contract.more} more`] : []);
  return el("div", { class: "contract" },
    "Contract: ", badge(contract.verdict.replace(/_/g, " "), kind),
    contract.breaks.length ? el("ul", { class: "breaks" }, contract.breaks.map((b) => el("li", {}, el("code", {}, b)))) : null,
    lines.length ? el("details", {}, el("summary", {}, `${contract.changes.length + contract.more} change(s)`),
      el("pre", {}, lines.join("\n"))) : null);
}

// An action's outcome on each host.
function drawActed(acted) {
  const rows = acted.hosts.map((h) => el("tr", { "data-host": h.host, "data-outcome": h.outcome },
    el("td", {}, h.host),
    el("td", {}, badge(h.outcome.replace(/_/g, " "), ["serving", "stopped"].includes(h.outcome) ? "ok" : "bad")),
    el("td", {}, h.error || "")));
  panel.replaceChildren(...[
    el("h2", {}, `${acted.action} ${acted.cell} ${acted.version}: `, badge(acted.result.replace(/_/g, " "),
      ["serving", "stopped"].includes(acted.result) ? "ok" : "bad")),
    el("p", { class: "muted" }, `${acted.summary} · by ${acted.by}`),
    rows.length ? table([["Host"], ["Outcome"], ["Error"]], rows) : null,
    acted.notes.map((n) => el("p", { class: "warn" }, n)),
    contractView(acted.contract)].flat().filter((p) => p));
}

// Rollback and undeploy of a deployed cell, each confirmed first. The
// buttons are made once and relabelled on each redraw, so a click never
// lands on a button the next snapshot replaced.
const cellActions = (() => {
  let data = null;
  const back = el("button", { type: "button", id: "rollback" });
  const stop = el("button", { type: "button", id: "undeploy", class: "danger" }, "Undeploy");
  back.addEventListener("click", async () => {
    const [id, from, to] = [data.id, data.desired, data.history[1].version];
    if (!confirm(`Roll ${id} back from ${from} to ${to} on every host?`)) return;
    const acted = await release(`/api/cells/${encodeURIComponent(id)}/rollback`, null, `rollback ${id}`);
    if (acted) drawActed(acted);
  });
  stop.addEventListener("click", async () => {
    const id = data.id;
    if (!confirm(`Undeploy ${id}? Every host stops serving it.`)) return;
    const acted = await release(`/api/cells/${encodeURIComponent(id)}/undeploy`, null, `undeploy ${id}`);
    if (acted) drawActed(acted);
  });
  const bar = el("p", { class: "actions" }, back, stop);
  return (latest) => {
    data = latest;
    if (!releasesEnabled || !token() || !data.desired) return null;
    const previous = data.history[1];
    back.hidden = !previous;
    back.textContent = previous ? `Roll back to ${previous.version}` : "";
    return bar;
  };
})();

function drawHistory(history) {
  if (!history.length) return null;
  const rows = history.map((r) => el("tr", { "data-version": r.version, class: r.current ? "current" : null },
    el("td", {}, r.version, r.current ? " " : null, r.current ? badge("desired", "ok") : null),
    el("td", {}, when(r.deployed_at_ms)),
    el("td", {}, el("code", {}, r.digest.slice(0, 19))),
    el("td", {}, r.signer ? el("code", {}, r.signer.slice(0, 16)) : el("span", { class: "muted" }, "unsigned")),
    el("td", { class: "num" }, r.replicas === null ? "all" : r.replicas)));
  return [el("h2", {}, "Versions"),
    table([["Version"], ["Deployed"], ["Digest"], ["Signed by"], ["Replicas", "num"]], rows)];
}

// The dead letter inspected, kept across redraws.
const letterDetail = el("pre", { id: "letter", hidden: true });

function drawDeadLetters(data) {
  const detail = letterDetail;
  const replayPath = `/api/cells/${encodeURIComponent(data.cell)}/dead-letters/replay`;
  const canAct = actionsEnabled && token();
  const rows = data.letters.map((l) => {
    const inspect = el("button", { type: "button", class: "inspect", "data-seq": l.seq }, "inspect");
    inspect.addEventListener("click", () => {
      detail.hidden = false;
      detail.textContent = JSON.stringify(l, null, 2);
    });
    const message = l.body_in_original
      ? `(too large: in ${l.stream} seq ${l.stream_seq})`
      : (l.message && l.message.id) || "(not an envelope)";
    let replay = null;
    if (canAct) {
      replay = el("button", { type: "button", class: "replay", "data-seq": l.seq }, "replay");
      replay.addEventListener("click", () => act(replayPath, { seqs: [l.seq] }, `replay ${l.seq}`));
    }
    return el("tr", { "data-seq": l.seq },
      el("td", { class: "num" }, l.seq),
      el("td", {}, l.subject),
      el("td", { class: "num" }, l.delivered),
      el("td", {}, badge(l.error.code, "bad"), " ", l.error.message),
      el("td", {}, el("code", {}, message)),
      el("td", {}, inspect, " ", replay));
  });
  let all = null;
  if (canAct && data.letters.length) {
    all = el("button", { type: "button", id: "replay-all" }, "replay all");
    all.addEventListener("click", () => {
      if (confirm(`Replay every dead letter of ${data.cell}? Deploy a fix first.`)) {
        act(replayPath, { all: true }, "replay all");
      }
    });
  }
  show(
    el("h1", {}, "Dead letters of ", cellLink(data.cell)),
    data.letters.length
      ? table([["Seq", "num"], ["Subject"], ["Delivered", "num"], ["Error"], ["Message"], ["Actions"]], rows)
      : el("p", {}, "No dead letters."),
    all,
    panel,
    el("p", { class: "muted" }, `Replay after a fix: cbs dlq replay ${data.cell} SEQ… (or --all)`),
    detail);
}

function flowLink(id) {
  return el("a", { href: `/flows/${encodeURIComponent(id)}` }, el("code", {}, id));
}

function fmtDuration(us) {
  return us >= 1000 ? `${(us / 1000).toFixed(1)} ms` : `${us} µs`;
}

function outcomeBadge(outcome) {
  return badge(outcome, outcome === "ok" ? "ok" : "bad");
}

// The latest failed hops, newest first.
function drawFailedFlows(data) {
  const rows = data.hops.map((h) => el("tr", { "data-flow": h.correlation_id },
    el("td", {}, when(h.started_ms)),
    el("td", {}, h.host),
    el("td", {}, cellLink(h.cell)),
    el("td", {}, flowLink(h.correlation_id)),
    el("td", {}, outcomeBadge(h.outcome), " ", h.error || "")));
  show(
    el("h1", {}, "Failed flows"),
    data.hops.length
      ? table([["Started"], ["Host"], ["Cell"], ["Flow"], ["Error"]], rows)
      : el("p", {}, "No failed hop in the hosts' recent flows."));
}

// One flow's hops as a timeline: each a bar from its start, as long as it ran.
function drawFlow(data) {
  const hops = data.hops;
  if (!hops.length) {
    show(el("h1", {}, "Flow ", el("code", {}, data.correlation_id)),
      el("p", {}, "No host remembers this flow (hosts keep their recent hops only)."));
    return;
  }
  const start = Math.min(...hops.map((h) => h.started_ms));
  const end = Math.max(...hops.map((h) => h.started_ms + h.duration_us / 1000));
  const span = Math.max(end - start, 1);
  const rows = hops.map((h) => {
    const left = ((h.started_ms - start) / span) * 100;
    const width = Math.max((h.duration_us / 1000 / span) * 100, 0.5);
    const bar = el("div", { class: `bar ${h.outcome === "ok" ? "ok" : "bad"}` });
    bar.style.marginLeft = `${left}%`;
    bar.style.width = `${width}%`;
    return el("tr", { "data-hop": h.message_id },
      el("td", { class: "num" }, `+${h.started_ms - start} ms`),
      el("td", {}, h.host),
      el("td", {}, cellLink(h.cell)),
      el("td", {}, h.version),
      el("td", { class: "num" }, fmtDuration(h.duration_us)),
      el("td", {}, outcomeBadge(h.outcome)),
      el("td", { class: "timeline" }, bar),
      el("td", {}, h.error || ""));
  });
  show(
    el("h1", {}, "Flow ", el("code", {}, data.correlation_id)),
    el("p", { class: "muted" }, `${hops.length} hop(s) from ${when(start)}`),
    table([["Offset", "num"], ["Host"], ["Cell"], ["Version"], ["Duration", "num"], ["Outcome"], ["Timeline"], ["Error"]], rows));
}

function drawAdvice(data) {
  const items = data.advice.map((a) => el("li", { class: "advice", "data-kind": a.kind, "data-cell": a.cell },
    el("h2", {}, badge(a.kind.replace(/_/g, " "), "warn"), " ", a.title),
    el("p", {}, a.evidence),
    el("p", {}, "Apply: ", el("code", {}, a.command))));
  show(
    el("h1", {}, "Advice"),
    el("p", { class: "muted" }, `From ${data.history_secs} s of samples; refusals and lag growth over the last ${data.window_secs} s.`),
    items.length ? el("ul", { class: "advice-list" }, items) : el("p", { id: "no-advice" }, "No advice: nothing measured calls for a change."));
}

// Deploying an uploaded bundle: check it (the contract gate's verdict),
// then deploy it, confirmed. Built once: the file chosen survives redraws.
const deployForm = (() => {
  const file = el("input", { type: "file", id: "bundle", accept: ".cbs", "aria-label": "Bundle" });
  const check = el("button", { type: "submit" }, "Check");
  const form = el("form", { id: "deploy-form" }, el("label", { for: "bundle" }, "Bundle (.cbs) "), file, " ", check);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!file.files.length) return;
    const bytes = await file.files[0].arrayBuffer();
    const preview = await release("/api/deploy/preview", bytes, "check");
    if (preview) drawPreview(preview, bytes);
  });
  return form;
})();

function drawPreview(preview, bytes) {
  const breaking = preview.contract.verdict === "breaking";
  const force = el("input", { type: "checkbox", id: "force" });
  const go = el("button", { type: "button", id: "deploy" }, `Deploy ${preview.cell} ${preview.version}`);
  go.addEventListener("click", async () => {
    const forced = breaking && force.checked;
    if (breaking && !forced) {
      if (!panel.querySelector("#held")) {
        panel.append(el("p", { class: "bad", id: "held" }, "Not deployed: the contract breaks the deployed one; bump the major version, or force it."));
      }
      return;
    }
    const from = preview.deployed ? ` (replacing ${preview.deployed})` : "";
    if (!confirm(`Deploy ${preview.cell} ${preview.version}${from} to its hosts?`)) return;
    const acted = await release(`/api/deploy${forced ? "?force=true" : ""}`, bytes, `deploy ${preview.cell}`);
    if (acted) drawActed(acted);
  });
  panel.replaceChildren(...[
    el("h2", {}, `${preview.cell} ${preview.version}`),
    el("p", {}, preview.deployed ? `Deployed now: ${preview.deployed}` : "Not deployed yet: its first release.",
      " Digest ", el("code", {}, preview.digest.slice(0, 19)), " · ",
      preview.signer ? ["signed by ", el("code", {}, preview.signer.slice(0, 16))] : "unsigned"),
    contractView(preview.contract),
    breaking ? el("p", {}, force, el("label", { for: "force" }, " deploy anyway (--force)")) : null,
    el("p", {}, go)].filter((p) => p));
}

function drawPolicies(hosts) {
  const rows = hosts.map((h) => el("tr", { "data-host": h.host },
    el("td", {}, h.host),
    el("td", {}, h.watching ? badge("watching", "ok") : el("span", { class: "muted" }, "static")),
    el("td", {}, !h.watching ? "" : h.trusted_keys.length
      ? h.trusted_keys.map((k) => el("code", { class: "key" }, k.slice(0, 16)))
      : badge("any bundle, unsigned", "warn")),
    el("td", {}, h.watching ? (h.process_bundles ? badge("processes allowed", "warn") : "wasm only") : "")));
  return rows.length ? table([["Host"], ["Follows"], ["Trusted keys"], ["Bundles"]], rows) : el("p", { class: "muted" }, "No host answers.");
}

function drawReleases(data) {
  const rows = data.events.map((e) => el("tr", { "data-check": e.check, "data-action": e.action },
    el("td", {}, when(e.stored_ms)),
    el("td", {}, e.action),
    el("td", {}, e.cell === "*" ? "every cell" : cellLink(e.cell)),
    el("td", {}, e.version || ""),
    el("td", {}, el("code", {}, (e.digest || "").slice(0, 19))),
    el("td", {}, e.user),
    el("td", {}, e.key ? el("code", {}, e.key.slice(0, 16)) : ""),
    el("td", {}, badge(e.check, e.check === "verified" ? "ok" : e.check === "bad" ? "bad" : ""),
      e.problems.length ? el("div", { class: "muted" }, e.problems.join("; ")) : null),
    el("td", {}, contractView(e.contract)),
    el("td", {}, e.detail || "")));
  const deploying = releasesEnabled && token()
    ? [el("h2", {}, "Deploy a bundle"), deployForm, panel]
    : null;
  show(
    el("h1", {}, "Releases"),
    deploying,
    el("h2", {}, "Hosts' policy"),
    drawPolicies(data.hosts),
    el("h2", {}, "History"),
    data.events.length
      ? table([["Stored"], ["Action"], ["Cell"], ["Version"], ["Digest"], ["User"], ["Key"], ["Check"], ["Contract"], ["Detail"]], rows)
      : el("p", {}, "No audited changes (the audit trail is on NATS: cbs console --nats URL)."));
}

// The status line is a live region: it changes, and is read out, only
// when the state does; the time of the last update is beside it.
function say(text, bad) {
  status.className = bad ? "bad" : "";
  if (status.textContent !== text) status.textContent = text;
}

// A redraw replaces the view's elements: the link or button that had the
// keyboard focus gets it back in the new drawing, so that a keyboard user
// is not sent back to the top of the page every second.
function focusKey(node) {
  return [node.tagName, node.getAttribute("href"), node.className, node.dataset.seq, node.textContent].join("\u0000");
}
function focusedKey() {
  const active = document.activeElement;
  return active && active !== view && view.contains(active) ? focusKey(active) : null;
}
function refocus(key) {
  if (key === null || (document.activeElement && view.contains(document.activeElement))) return;
  const again = [...view.querySelectorAll("a, button, input, [tabindex]")].find((node) => focusKey(node) === key);
  if (again) again.focus({ preventScroll: true });
}

// Follows the view's stream while the page is shown. A page kept in the
// back/forward cache would keep its stream open, and browsers open six
// connections to one origin at most: the seventh view visited would wait.
// Draws the current view again (after signing in or out).
let redraw = () => {};

function follow(path, draw, title) {
  document.title = `${title} · CBS console`;
  let source = null;
  const open = () => {
    source = new EventSource(path);
    let last = null;
    source.addEventListener("snapshot", (event) => {
      // Views read every few seconds arrive unchanged in between: a
      // redraw would only replace the buttons under the pointer.
      if (event.data !== last) {
        last = event.data;
        const data = JSON.parse(event.data);
        redraw = () => {
          const focused = focusedKey();
          draw(data);
          refocus(focused);
        };
        redraw();
      }
      view.setAttribute("aria-busy", "false");
      say("live");
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    });
    source.addEventListener("missing", () => {
      last = null;
      show(el("h1", {}, title), el("p", {}, "Nothing serves or wants this cell now."));
      view.setAttribute("aria-busy", "false");
    });
    source.addEventListener("problem", (event) => {
      say(`cannot read the lattice: ${JSON.parse(event.data).detail}`, true);
    });
    source.onerror = () => say("disconnected; retrying…", true);
  };
  open();
  addEventListener("pagehide", () => source.close());
  addEventListener("pageshow", (event) => { if (event.persisted) open(); });
}

const cellPath = location.pathname.match(/^\/cells\/([^/]+)(\/dead-letters)?$/);
if (cellPath && cellPath[2]) {
  const id = decodeURIComponent(cellPath[1]);
  follow(`/events/cells/${encodeURIComponent(id)}/dead-letters`, drawDeadLetters, `${id} dead letters`);
} else if (cellPath) {
  const id = decodeURIComponent(cellPath[1]);
  follow(`/events/cells/${encodeURIComponent(id)}`, drawCell, id);
} else if (location.pathname === "/flows") {
  follow("/events/flows", drawFailedFlows, "Failed flows");
} else if (location.pathname.startsWith("/flows/")) {
  const id = decodeURIComponent(location.pathname.slice("/flows/".length));
  follow(`/events/flows/${encodeURIComponent(id)}`, drawFlow, `Flow ${id}`);
} else if (location.pathname === "/advice") {
  follow("/events/advice", drawAdvice, "Advice");
} else if (location.pathname === "/releases") {
  follow("/events/releases", drawReleases, "Releases");
} else {
  follow("/events/lattice", drawLattice, "Lattice");
}
