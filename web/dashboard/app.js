// The dashboard: one page per hash (#overview, #clients, …), a client of the REST API
// (Authorization: Bearer) and of the WebSocket protocol through the daemon's own SDK.
// Everything shown goes in with textContent: a topic or payload can never become markup.

import { Client } from "/sdk/switchboard.mjs";
import { drawChart } from "./chart.js";

const KEY = "switchboard.token";
const LIVE_MAX = 500;
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(KEY);
let sb = null;
let pollTimer = null;
/** Device id → the data of its latest `$devices/<id>` notice. */
const devices = new Map();
/** Device id → its Last Will (`null`: none), as the client list last showed it. */
const wills = new Map();
const rates = { in: [], out: [], last: null };

/** `h("td", { class: "x" }, "text", child)`: an element with text and children. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children) el.append(c instanceof Node ? c : String(c ?? ""));
  return el;
}

function fillTable(table, head, rows, empty = "none") {
  table.replaceChildren(h("thead", {}, h("tr", {}, ...head.map((t) => h("th", {}, t)))));
  const body = h("tbody");
  if (rows.length === 0) body.append(h("tr", {}, h("td", { colspan: head.length, class: "muted" }, empty)));
  for (const cells of rows) body.append(h("tr", {}, ...cells.map((c) => h("td", {}, c))));
  table.append(body);
}

/** A REST call with the credential; throws an Error carrying the API's message. */
async function api(method, path, body) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  const json = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const error = new Error(json?.error?.message ?? `${res.status} ${res.statusText}`);
    error.status = res.status;
    throw error;
  }
  return json;
}

const time = (ms) => (ms ? new Date(ms).toLocaleString() : "");
const sum = (o) => Object.values(o ?? {}).reduce((a, b) => a + (typeof b === "number" ? b : 0), 0);

function duration(s) {
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${hh}h` : hh ? `${hh}h ${m}m` : `${m}m ${s % 60}s`;
}

function bytes(n) {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KB` : `${n} B`;
}

// ---- login ----

async function login(candidate) {
  token = candidate;
  try {
    await api("GET", "/stats");
  } catch (error) {
    // An API key that is not the admin's still may publish and subscribe.
    if (error.status !== 403) {
      token = null;
      throw error.status === 401 ? new Error(`Wrong token: ${error.message}`) : error;
    }
  }
  sessionStorage.setItem(KEY, candidate);
  start();
}

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("login-error").textContent = "";
  try {
    await login($("token").value.trim());
  } catch (error) {
    $("login-error").textContent = error.message;
  }
});

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.hash = "";
  location.reload();
});

function start() {
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  sb = new Client(`${proto}://${location.host}/ws`, { token, maxReconnectDelay: 5000 });
  const status = sb.subscribe("$devices/+");
  status.on("message", (m) => {
    devices.set(m.topic.slice("$devices/".length), m.data ?? {});
    if (current() === "devices") {
      renderDevices();
      // A device that came (back) may carry a new will: asked at most 4 times a second.
      if (m.data?.online) learnWills();
    }
    if (current() === "clients") clients().catch((e) => console.warn(e));
  });
  status.ready.catch(() => {});
  window.addEventListener("hashchange", show);
  show();
}

// ---- pages ----

const pages = { overview, clients, devices: refreshDevices, topics, live: () => {}, publish: () => {}, recordings, webhooks, bridges };
const current = () => (location.hash.slice(1) in pages ? location.hash.slice(1) : "overview");

function show() {
  const name = current();
  for (const p of Object.keys(pages)) $(p).hidden = p !== name;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === `#${name}`);
  clearInterval(pollTimer);
  const refresh = () => pages[name]().catch?.((e) => console.warn(e));
  refresh();
  if (name !== "live" && name !== "publish" && name !== "devices") pollTimer = setInterval(refresh, name === "overview" ? 1000 : 3000);
}

async function overview() {
  const [info, stats] = await Promise.all([api("GET", "/info"), api("GET", "/stats").catch(() => null)]);
  const cards = [
    ["version", info.version],
    ["uptime", duration(info.uptime_s)],
  ];
  if (stats) {
    const c = stats.connections;
    cards.push(
      ["WebSocket", c.ws],
      ["MQTT tcp", c.mqtt_tcp],
      ["MQTT tls", c.mqtt_tls],
      ["MQTT ws", c.mqtt_ws + c.mqtt_wss],
      ["subscriptions", stats.subscriptions],
      ["retained", stats.retained],
      ["store", bytes(stats.store_disk_bytes)],
    );
    const now = performance.now();
    const totals = { in: sum(stats.messages_in), out: sum(stats.messages_out) };
    if (rates.last) {
      const dt = (now - rates.last.at) / 1000;
      rates.in.push(Math.max(0, (totals.in - rates.last.in) / dt));
      rates.out.push(Math.max(0, (totals.out - rates.last.out) / dt));
      for (const k of ["in", "out"]) rates[k].splice(0, rates[k].length - 120);
    }
    rates.last = { at: now, ...totals };
    cards.push(["in /s", Math.round(rates.in.at(-1) ?? 0)], ["out /s", Math.round(rates.out.at(-1) ?? 0)]);
    $("rate").dataset.points = String(rates.in.length);
    drawChart($("rate"), [
      { values: rates.in, color: "#2563eb" },
      { values: rates.out, color: "#16a34a" },
    ]);
    fillTable($("ov-drops"), ["reason", "messages"], Object.entries(stats.messages_dropped));
    const [bridges, hooks] = await Promise.all([api("GET", "/bridges"), api("GET", "/webhooks")]);
    fillTable(
      $("ov-links"),
      ["kind", "name", "state", "queue", "last error"],
      [
        ...bridges.bridges.map((b) => ["bridge", b.name, b.connected ? "connected" : "down", `${b.queue_messages} msgs`, b.last_error ?? ""]),
        ...hooks.webhooks.map((w) => ["webhook", `${w.name} (${w.url})`, w.dead ? `${w.dead} dead letters` : "ok", `${w.pending} pending`, w.last_error ?? ""]),
      ],
      "none configured",
    );
  }
  $("ov-cards").replaceChildren(...cards.map(([label, value]) => h("div", { class: "stat" }, h("b", {}, value), h("span", {}, label))));
  await clusterNodes(info.cluster);
}

/** The boxes whose heartbeat is live (docs/cluster.md); shown only with `[cluster]` on. */
async function clusterNodes(cluster) {
  $("ov-cluster").hidden = !cluster;
  if (!cluster) return;
  const { nodes } = await api("GET", "/cluster/nodes");
  const now = Date.now();
  fillTable(
    $("ov-nodes"),
    ["node", "HTTP", "version", "clients", "up", "last beat"],
    nodes.map((n) => [
      n.node === cluster.node ? `${n.node} (this box)` : n.node,
      n.http,
      n.version,
      n.clients,
      duration(Math.max(0, Math.round((now - n.started_at) / 1000))),
      `${Math.max(0, Math.round((now - n.beat_at) / 1000))} s ago`,
    ]),
    "none live: Redis unreachable?",
  );
}

const disconnectButton = (id) => h("button", { class: "danger", "data-client": id, onclick: () => disconnect(id) }, "Disconnect");

async function clients() {
  const { clients } = await api("GET", "/clients");
  const mqtt = clients.filter((c) => c.transport !== "ws");
  for (const c of mqtt) wills.set(c.client_id, c.will);
  fillTable(
    $("cl-ws"),
    ["id", "user", "credential", "since", "subscriptions", ""],
    clients.filter((c) => c.transport === "ws").map((c) => [
      c.id === sb.clientId ? `${c.id} (this dashboard)` : c.id,
      c.user ?? "",
      c.credential,
      time(c.connected_at),
      c.subscriptions.join(", "),
      c.id === sb.clientId ? "" : disconnectButton(c.id),
    ]),
    "no WebSocket clients",
  );
  fillTable(
    $("cl-mqtt"),
    ["id", "user", "protocol", "transport", "address", "since", "subscriptions", "last will", ""],
    mqtt.map((c) => [c.client_id, c.user ?? "", c.protocol, c.transport, c.address, time(c.connected_at), c.subscriptions.join(", "), willText(c.will), disconnectButton(c.id)]),
    "no MQTT devices connected",
  );
}

/** A Last Will for people: where it goes and what it says. */
function willText(will) {
  if (!will) return "none";
  const flags = [will.retain ? "retained" : "", will.qos ? `QoS ${will.qos}` : "", will.delay_s ? `after ${will.delay_s} s` : ""].filter(Boolean);
  return `${will.topic} = ${describe(will.data)}${flags.length ? ` (${flags.join(", ")})` : ""}`;
}

async function disconnect(id) {
  await api("DELETE", `/clients/${encodeURIComponent(id)}`).catch((e) => alert(e.message));
  await clients();
}

/**
 * The devices page: status from the `$devices` notices, Last Wills from the client list
 * (admin only: another credential sees no wills). A will is known while its device is
 * connected; this tab remembers it after, to say whether it was published.
 */
async function refreshDevices() {
  renderDevices();
  const listed = await api("GET", "/clients").catch(() => null);
  for (const c of listed?.clients ?? []) if (c.transport !== "ws") wills.set(c.client_id, c.will);
  renderDevices();
}

let willsTimer = 0;
function learnWills() {
  willsTimer ||= setTimeout(() => {
    willsTimer = 0;
    refreshDevices().catch((e) => console.warn(e));
  }, 250);
}

/** What became of a device's will, by why it went (docs/protocol.md, device status). */
function willCell(id, d) {
  if (!wills.has(id)) return "unknown";
  const will = wills.get(id);
  if (!will) return "none";
  if (d.online) return willText(will);
  const fired = d.reason === "lost" || d.reason === "kicked";
  return `${fired ? "published" : "not published"}: ${willText(will)}`;
}

function renderDevices() {
  const rows = [...devices].sort(([a], [b]) => a.localeCompare(b));
  fillTable(
    $("dev-table"),
    ["device", "status", "user", "transport", "last seen", "reason", "last will"],
    rows.map(([id, d]) => [
      id,
      h("span", { class: `badge ${d.online ? "online" : "offline"}`, "data-device": id }, d.online ? "online" : "offline"),
      d.username ?? "",
      `${d.protocol ?? ""} ${d.transport ?? ""}`,
      d.online ? "now" : time(d.ts),
      d.reason ?? "",
      h("span", { "data-will": id }, willCell(id, d)),
    ]),
    "no devices seen",
  );
}

async function topics() {
  const { topics } = await api("GET", "/topics");
  fillTable($("tp-subs"), ["filter", "subscribers"], topics.map((t) => [t.filter ?? t.topic, t.subscribers]), "no subscriptions");
}

/** Retained values: subscribing delivers each matching topic's stored value first. */
let retainedSub = null;
const retained = new Map();
$("tp-form").addEventListener("submit", (e) => {
  e.preventDefault();
  retainedSub?.unsubscribe().catch(() => {});
  retained.clear();
  retainedSub = sb.subscribe($("tp-filter").value.trim());
  retainedSub.on("message", (m) => {
    if (m.retained) retained.set(m.topic, m);
    else if (retained.has(m.topic)) retained.set(m.topic, m);
    renderRetained();
  });
  retainedSub.ready.then(renderRetained, (err) => ($("tp-retained").textContent = err.message));
});

function renderRetained() {
  const rows = [...retained.values()].filter((m) => !isEmpty(m.data));
  fillTable(
    $("tp-retained"),
    ["topic", "value", "since", ""],
    rows.map((m) => [
      m.topic,
      h("pre", {}, describe(m.data)),
      time(m.ts),
      h("button", { class: "danger", onclick: () => clearRetained(m.topic) }, "Clear"),
    ]),
    "no retained values",
  );
}

/** A form whose submit shows a table from the API, or the API's refusal. */
function lookup(form, error, show) {
  $(form).addEventListener("submit", async (e) => {
    e.preventDefault();
    $(error).textContent = "";
    try {
      await show();
    } catch (err) {
      $(error).textContent = err.message;
    }
  });
}

lookup("hs-form", "hs-error", async () => {
  const topic = $("hs-topic").value.trim();
  const last = Number($("hs-last").value) || 50;
  const { messages } = await api("GET", `/history?topic=${encodeURIComponent(topic)}&last=${last}`);
  fillTable(
    $("hs-table"),
    ["seq", "time", "event", "from", "data"],
    messages.map((m) => [m.seq, time(m.ts), m.event ?? "", m.from, h("pre", {}, describe(m.data))]),
    "nothing kept for this topic",
  );
});

lookup("pr-form", "pr-error", async () => {
  const topic = $("pr-topic").value.trim();
  const body = await api("GET", `/presence?topic=${encodeURIComponent(topic)}`);
  const members = body.members ?? body;
  fillTable(
    $("pr-table"),
    ["client", "user", "info"],
    members.map((m) => [m.client, m.user ?? "", m.info ? JSON.stringify(m.info) : ""]),
    "nobody there",
  );
});

const isEmpty = (d) => d === "" || d === null;

async function clearRetained(topic) {
  // An empty retained publish forgets the stored value (docs/protocol.md).
  await sb.publish(topic, "", { retain: true });
  retained.delete(topic);
  renderRetained();
}

/** An end-to-end envelope (docs/recordings.md's `{"v":"e2e1","iv","ct"}`, or a JWE): opaque here. */
function isEnvelope(data) {
  if (!data || typeof data !== "object" || Array.isArray(data)) return false;
  if (typeof data.v === "string" && data.v.startsWith("e2e")) return true;
  return typeof data.ciphertext === "string" && ("protected" in data || "iv" in data);
}

/**
 * What a JWE's headers say in the clear (docs/e2e.md): its kind, the key ids it was made
 * for and the room epoch. Read, never trusted: only a recipient can check the tag.
 */
function jweLabel(jwe) {
  let header = {};
  try {
    const b64 = String(jwe.protected).replace(/-/g, "+").replace(/_/g, "/");
    header = JSON.parse(atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, "=")));
  } catch {
    return "JWE, unreadable header";
  }
  const parts = [`JWE${typeof header.sb?.kind === "string" ? " " + header.sb.kind : ""}`];
  const kids = Array.isArray(jwe.recipients)
    ? jwe.recipients.map((r) => r?.header?.kid).filter((k) => typeof k === "string")
    : [header.kid].filter((k) => typeof k === "string");
  if (kids.length) parts.push(`key ${kids.map((k) => k.slice(0, 12)).join(", ")}`);
  if (Number.isInteger(header.sb?.epoch)) parts.push(`epoch ${header.sb.epoch}`);
  return parts.join(", ");
}

/** A payload for people: JSON pretty-printed, binary as its size and first bytes. */
function describe(data) {
  if (data && typeof data === "object" && typeof data.$base64 === "string" && Object.keys(data).length === 1) {
    const raw = atob(data.$base64);
    const hex = [...raw.slice(0, 32)].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join(" ");
    return `binary, ${raw.length} bytes: ${hex}${raw.length > 32 ? " …" : ""}`;
  }
  if (isEnvelope(data)) {
    const ct = data.ct ?? data.ciphertext;
    return `encrypted (${data.v ?? jweLabel(data)}), ${typeof ct === "string" ? ct.length : "?"} characters of ciphertext: only its recipients can read it`;
  }
  return typeof data === "string" ? data : JSON.stringify(data, null, 2);
}

// ---- live messages ----

let liveSub = null;
let paused = false;
let held = [];
let frame = 0;
$("lv-form").addEventListener("submit", (e) => {
  e.preventDefault();
  liveSub?.unsubscribe().catch(() => {});
  const filter = $("lv-filter").value.trim();
  $("lv-status").textContent = `subscribing to ${filter} …`;
  liveSub = sb.subscribe(filter);
  liveSub.on("message", (m) => {
    held.push(m);
    if (held.length > LIVE_MAX) held.splice(0, held.length - LIVE_MAX);
    if (paused) $("lv-held").textContent = `paused, ${held.length} held`;
    else if (!frame) frame = requestAnimationFrame(flush);
  });
  liveSub.ready.then(
    () => ($("lv-status").textContent = `subscribed to ${filter}`),
    (err) => ($("lv-status").textContent = `refused: ${err.message}`),
  );
});

/** Renders what arrived since the last frame; the list keeps the newest LIVE_MAX. */
function flush() {
  frame = 0;
  const list = $("lv-list");
  for (const m of held) {
    list.prepend(
      h(
        "li",
        {},
        h("div", { class: "meta" }, `${new Date(m.ts).toLocaleTimeString()} · ${m.topic}${m.event ? ` · ${m.event}` : ""} · from ${m.from}${m.retained ? " · retained" : ""}`),
        h("pre", {}, describe(m.data)),
      ),
    );
  }
  held = [];
  $("lv-held").textContent = "";
  while (list.children.length > LIVE_MAX) list.lastElementChild.remove();
}

$("lv-pause").addEventListener("click", () => {
  paused = !paused;
  $("lv-pause").textContent = paused ? "Resume" : "Pause";
  $("lv-held").textContent = paused ? `paused, ${held.length} held` : "";
  if (!paused) flush();
});
$("lv-clear").addEventListener("click", () => {
  held = [];
  $("lv-list").replaceChildren();
});

// ---- publish ----

$("pb-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("pb-data").value;
  let data = text;
  try {
    data = text.trim() === "" ? null : JSON.parse(text);
  } catch {
    // not JSON: sent as text
  }
  const event = $("pb-event").value.trim() || undefined;
  try {
    const { seq } = await sb.publish($("pb-topic").value.trim(), data, { event, retain: $("pb-retain").checked });
    $("pb-result").textContent = `published, seq ${seq}`;
  } catch (error) {
    $("pb-result").textContent = `refused: ${error.message}`;
  }
});

// ---- recordings ----

const button = (label, action, attrs = {}) =>
  h("button", { ...attrs, onclick: () => action().then(recordings, (e) => ($("rc-error").textContent = e.message)) }, label);

async function recordings() {
  const [{ recordings: list }, { replays }] = await Promise.all([api("GET", "/recordings"), api("GET", "/replays")]);
  fillTable(
    $("rc-table"),
    ["id", "name", "state", "messages", "span", "notes", ""],
    list.map((r) => [
      r.id,
      r.name,
      r.state,
      r.messages,
      r.span_us ? `${(r.span_us / 1e6).toFixed(1)} s` : "",
      r.notes ?? "",
      h(
        "span",
        {},
        r.state === "recording"
          ? button("Stop", () => api("POST", `/recordings/${r.id}/stop`), { "data-stop": r.id })
          : button("Replay", () => api("POST", `/recordings/${r.id}/replay`, { speed: Number($("rc-speed").value) || 1 }), { "data-replay": r.id }),
        button("Export", () => exportRecording(r)),
        button("Delete", () => api("DELETE", `/recordings/${r.id}`), { class: "danger" }),
      ),
    ]),
    "no recordings",
  );
  fillTable(
    $("rp-table"),
    ["id", "recording", "state", "progress", "speed", ""],
    replays.map((p) => [
      p.id,
      p.recording,
      p.state,
      h(
        "span",
        { "data-replay-progress": p.id },
        h("progress", { max: String(p.total || 1), value: String(p.sent) }),
        ` ${p.sent}/${p.total}`,
      ),
      p.speed ?? "max",
      p.state === "running"
        ? button("Pause", () => api("POST", `/replays/${p.id}/pause`))
        : p.state === "paused"
          ? button("Resume", () => api("POST", `/replays/${p.id}/resume`))
          : "",
    ]),
    "no replays",
  );
}

/** The export is JSON lines behind the credential: fetched, then saved from a blob. */
async function exportRecording(r) {
  const res = await fetch(`/api/v1/recordings/${r.id}/export`, { headers: { authorization: `Bearer ${token}` } });
  if (!res.ok) throw new Error(`export failed: ${res.status}`);
  const link = h("a", { href: URL.createObjectURL(await res.blob()), download: `recording-${r.id}.ndjson` });
  link.click();
  URL.revokeObjectURL(link.href);
}

$("rc-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("rc-error").textContent = "";
  const topics = $("rc-topics").value.split(",").map((t) => t.trim()).filter(Boolean);
  const notes = $("rc-notes").value.trim() || undefined;
  try {
    await api("POST", "/recordings", { name: $("rc-name").value.trim(), topics, notes });
    await recordings();
  } catch (error) {
    $("rc-error").textContent = error.message;
  }
});

$("rc-import").addEventListener("change", async () => {
  const file = $("rc-import").files[0];
  if (!file) return;
  $("rc-error").textContent = "";
  const res = await fetch("/api/v1/recordings/import", {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/x-ndjson" },
    body: await file.text(),
  });
  if (!res.ok) $("rc-error").textContent = (await res.json().catch(() => null))?.error?.message ?? `import failed: ${res.status}`;
  $("rc-import").value = "";
  await recordings();
});

// ---- bridges ----

async function bridges() {
  const { bridges: list } = await api("GET", "/bridges");
  fillTable(
    $("br-table"),
    ["name", "kind", "address", "state", "role", "last connected", "queue", "forwarded", "received", "refused", "dropped", "attempts", "last error"],
    list.map((b) => [
      b.name,
      b.kind,
      b.address,
      h("span", { class: `badge ${b.connected ? "online" : "offline"}`, "data-bridge": b.name }, b.connected ? "connected" : "down"),
      // With [cluster]: which box runs the bridge (docs/cluster.md); empty without a lease.
      h("span", { "data-role": b.name }, b.role ? `${b.role}${b.holder ? ` (${b.holder})` : ""}` : ""),
      time(b.connected_at),
      h("span", { "data-queue": b.name }, `${b.queue_messages} msgs, ${bytes(b.queue_bytes)}`),
      b.forwarded,
      b.received,
      b.refused,
      b.dropped,
      b.connect_attempts,
      h("span", { "data-error": b.name }, b.last_error ?? ""),
    ]),
    "no bridges configured",
  );
}

// ---- webhooks ----

async function webhooks() {
  const { webhooks: list } = await api("GET", "/webhooks");
  fillTable(
    $("wh-table"),
    ["name", "url", "pending", "delivered", "failed attempts", "dead", "last error", "last success"],
    list.map((w) => [w.name, w.url, w.pending, w.delivered, w.failed_attempts, w.dead, w.last_error ?? "", time(w.last_success)]),
    "no webhooks configured",
  );
  const sections = [];
  for (const w of list.filter((w) => w.dead > 0)) {
    const { dead } = await api("GET", `/webhooks/${encodeURIComponent(w.name)}/dead?limit=100`);
    const base = `/webhooks/${encodeURIComponent(w.name)}/dead`;
    const act = (label, path, attrs = {}) =>
      h("button", { ...attrs, onclick: () => api("POST", path).then(webhooks, (e) => ($("wh-error").textContent = e.message)) }, label);
    const table = h("table");
    fillTable(
      table,
      ["id", "events", "attempts", "last status", "last error", "failed", ""],
      dead.map((d) => [d.id, d.events, d.attempts, d.last_status ?? "", d.last_error ?? "", time(d.failed_at), act("Retry", `${base}/${d.id}/retry`)]),
    );
    sections.push(h("h2", {}, `Dead letters of ${w.name}`), act("Retry all", `${base}/retry`, { "data-retry-all": w.name }), table);
  }
  $("wh-dead").replaceChildren(...sections);
}

if (token) login(token).catch(() => ($("login").hidden = false));
else $("login").hidden = false;
