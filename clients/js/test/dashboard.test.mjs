// The web dashboard (/dashboard/, docs/dashboard.md) in headless Chromium against the
// real daemon: login, devices coming and going (mosquitto), the live viewer, the publish
// tool, disconnecting a client, retained values; and a screenshot of every page, in
// $SCREENSHOT_DIR (`SCREENSHOT_DIR=../../docs/screenshots npm test` refreshes the
// committed set) or a temporary directory.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { Client } from "../src/index.js";
import { ADMIN, launchChromium, mqttPublish, mqttSubscribe, startDaemon, startMosquitto, startRedis, until } from "./daemon.mjs";

const shots = resolve(process.env.SCREENSHOT_DIR ?? mkdtempSync(join(tmpdir(), "sb-shots-")));
mkdirSync(shots, { recursive: true });

let daemon;
let browser;
/** Another broker, which the daemon bridges `up/#` to. */
let mosquitto;
/** The webhook endpoint: answers `hookStatus`, keeps what it was sent. */
let hookStatus = 500;
const hooked = [];
const endpoint = http.createServer((req, res) => {
  let body = "";
  req.on("data", (c) => (body += c));
  req.on("end", () => {
    if (hookStatus === 200) hooked.push(body);
    res.writeHead(hookStatus).end();
  });
});
/** Content-Security-Policy violations any page reported. */
const violations = [];

before(async () => {
  await new Promise((r) => endpoint.listen(0, "127.0.0.1", r));
  mosquitto = await startMosquitto();
  daemon = await startDaemon({ extra: webhook(endpoint.address().port) + bridge(mosquitto.port) });
  browser = await launchChromium();
});

/** One webhook that gives up at once, so a failure is a dead letter without waiting. */
function webhook(port) {
  const secret = join(mkdtempSync(join(tmpdir(), "sb-hook-")), "hook.secret");
  writeFileSync(secret, "a-webhook-secret-that-is-long-enough");
  return `
[[webhooks]]
name = "alerts"
url = "http://127.0.0.1:${port}/hook"
secret_file = "${secret}"
topics = ["hooked/#"]
max_attempts = 1
retry_initial = "10ms"
`;
}

/** A bridge sending `up/#` to `port`, quick to reconnect. */
function bridge(port) {
  return `
[[bridges]]
name = "up"
address = "127.0.0.1:${port}"
reconnect_min = "100ms"
reconnect_max = "300ms"
[[bridges.topics]]
pattern = "up/#"
direction = "out"
`;
}

after(async () => {
  await browser?.close();
  await daemon?.dispose();
  await mosquitto?.dispose();
  endpoint.close();
});

/** A page in a fresh context (its own session storage) whose CSP violations are kept. */
async function newPage(width = 1100) {
  const context = await browser.newContext({ viewport: { width, height: 760 } });
  const page = await context.newPage();
  page.on("console", (m) => m.text().includes("Content Security Policy") && violations.push(m.text()));
  return page;
}

/** A logged-in dashboard page (of `on`, the suite's daemon unless given). */
async function dashboard(width = 1100, on = daemon) {
  const page = await newPage(width);
  await page.goto(`http://${on.http}/dashboard/`);
  await page.fill("#token", ADMIN);
  await page.click("#login button");
  await page.waitForSelector("#nav:not([hidden])");
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

test("the dashboard is served with a strict CSP and nosniff, and can be turned off", async () => {
  const res = await fetch(`http://${daemon.http}/dashboard/`);
  assert.equal(res.status, 200);
  const csp = res.headers.get("content-security-policy");
  assert.match(csp, /script-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe/);
  assert.equal(res.headers.get("x-content-type-options"), "nosniff");
  assert.match(await res.text(), /<script type="module" src="app.js">/);
  const bare = await fetch(`http://${daemon.http}/dashboard`, { redirect: "manual" });
  assert.equal(bare.status, 308);
  assert.equal(bare.headers.get("location"), "/dashboard/");
  const missing = await fetch(`http://${daemon.http}/dashboard/nope.js`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.code, "not_found");

  const off = await startDaemon({ extra: "[http]\ndashboard = false\n" });
  try {
    assert.equal((await fetch(`http://${off.http}/dashboard/`)).status, 404);
    assert.equal((await fetch(`http://${off.http}/sdk/switchboard.mjs`)).status, 200);
  } finally {
    await off.dispose();
  }
});

test("a wrong token is refused with a clear message; the admin token logs in and survives a reload", async () => {
  const page = await newPage();
  const context = page.context();
  try {
    await page.goto(`http://${daemon.http}/dashboard/`);
    await page.fill("#token", "not-the-token");
    await page.click("#login button");
    await page.waitForFunction(() => document.getElementById("login-error").textContent !== "");
    assert.match(await page.textContent("#login-error"), /^Wrong token/);
    assert.equal(await page.isVisible("#nav"), false);
    await shot(page, "login");

    await page.fill("#token", ADMIN);
    await page.click("#login button");
    await page.waitForSelector("#overview:not([hidden]) .stat");
    const cards = await page.textContent("#ov-cards");
    assert.match(cards, /version/);
    assert.match(cards, /uptime/);
    // Kept in session storage, not in local storage or cookies.
    assert.equal(await page.evaluate(() => sessionStorage.getItem("switchboard.token")), ADMIN);
    assert.equal(await page.evaluate(() => localStorage.length), 0);
    await page.reload();
    await page.waitForSelector("#nav:not([hidden])");
    // The live rate: messages flowing in show as a non-zero "in /s" (and a line to draw).
    const rate = () =>
      page.evaluate(() => {
        const card = [...document.querySelectorAll(".stat")].find((c) => c.querySelector("span").textContent === "in /s");
        return Number(card?.querySelector("b").textContent ?? 0);
      });
    let n = 0;
    await until(async () => {
      await mqttPublish(daemon, "demo/t", String(n++));
      // Three points, so the chart in the screenshot has lines.
      return (await rate()) > 0 && (await page.evaluate(() => Number(document.getElementById("rate").dataset.points))) >= 3;
    }, "a non-zero rate of messages in");
    await shot(page, "overview");
    await page.setViewportSize({ width: 390, height: 760 });
    await shot(page, "overview-phone");
  } finally {
    await context.close();
  }
});

test("an MQTT device shows online on the devices and clients pages, and offline when killed", async () => {
  const page = await dashboard();
  const device = await mqttSubscribe(daemon, "cmd/dash-dev-1", ["-i", "dash-dev-1", "--will-topic", "dev/dash-dev-1/will", "--will-payload", "gone"]);
  try {
    await page.click('a[href="#devices"]');
    const badge = '#dev-table [data-device="dash-dev-1"]';
    await page.waitForSelector(`${badge}:text("online")`);
    const will = '#dev-table [data-will="dash-dev-1"]';
    await page.waitForSelector(`${will}:text("dev/dash-dev-1/will = gone")`);
    await shot(page, "devices");
    await page.click('a[href="#clients"]');
    const row = '#cl-mqtt tr:has(td:text("dash-dev-1"))';
    await page.waitForSelector(row);
    const cells = await page.locator(`${row} td`).allTextContents();
    assert.deepEqual(cells.slice(0, 4), ["dash-dev-1", "", "mqtt/3.1.1", "mqtt"]);
    assert.match(cells[4], /^127\.0\.0\.1:\d+$/);
    assert.deepEqual(cells.slice(6, 8), ["cmd/dash-dev-1", "dev/dash-dev-1/will = gone"]);
    await page.click('a[href="#devices"]');
    device.child.kill("SIGKILL");
    await page.waitForSelector(`${badge}:text("offline")`);
    assert.match(await page.textContent("#dev-table"), /lost/);
    await page.waitForSelector(`${will}:text("published: dev/dash-dev-1/will = gone")`);
  } finally {
    device.stop();
    await page.context().close();
  }
});

test("the live viewer shows MQTT publishes: JSON pretty-printed, binary as bytes, envelopes as encrypted; pause holds them back", async () => {
  const page = await dashboard();
  try {
    await page.click('a[href="#live"]');
    await page.fill("#lv-filter", "sensors/#");
    await page.click('#lv-form button[type="submit"]');
    await page.waitForSelector('#lv-status:text("subscribed to sensors/#")');
    await mqttPublish(daemon, "sensors/kitchen/temp", '{"celsius":21.5,"ok":true}');
    await page.waitForSelector('#lv-list li:has-text("sensors/kitchen/temp")');
    assert.match(await page.textContent("#lv-list li pre"), /\{\n {2}"celsius": 21.5,\n {2}"ok": true\n\}/);
    assert.match(await page.textContent("#lv-list li .meta"), /from mqtt:/);

    const blob = join(daemon.dir, "blob.bin");
    writeFileSync(blob, Buffer.from([0xff, 0x00, 0xfe, 0x01]));
    await mqttPublish(daemon, "sensors/cam/raw", null, ["-f", blob]);
    await page.waitForSelector('#lv-list li:has-text("binary, 4 bytes: ff 00 fe 01")');
    await mqttPublish(daemon, "sensors/lock", '{"v":"e2e1","iv":"AAAA","ct":"c2VjcmV0LXN0dWZm"}');
    await page.waitForSelector('#lv-list li:has-text("sensors/lock") pre:text("encrypted (e2e1), 16 characters of ciphertext")');
    // A room message as the SDK makes it: its header names the room key and epoch.
    const header = { alg: "dir", enc: "A256CBC-HS512", kid: "room-kid-0123456789", sb: { kind: "room", topic: "sensors/room", epoch: 3, from: "ada", mid: "AAAA" } };
    const jwe = { protected: Buffer.from(JSON.stringify(header)).toString("base64url"), iv: "AAAA", ciphertext: "c2VjcmV0", tag: "AAAA" };
    await mqttPublish(daemon, "sensors/room", JSON.stringify(jwe));
    await page.waitForSelector('#lv-list li:has-text("sensors/room") pre:text("encrypted (JWE room, key room-kid-012, epoch 3), 8 characters of ciphertext")');
    await shot(page, "live");

    await page.click("#lv-pause");
    await mqttPublish(daemon, "sensors/held", "1");
    // Arrived and held while paused, shown on resume.
    await page.waitForSelector('#lv-held:text("paused, 1 held")');
    assert.equal(await page.locator('#lv-list li:has-text("sensors/held")').count(), 0);
    await page.click("#lv-pause");
    await page.waitForSelector('#lv-list li:has-text("sensors/held")');
  } finally {
    await page.context().close();
  }
});

test("the publish tool reaches mosquitto_sub, with retain", async () => {
  const page = await dashboard();
  const device = await mqttSubscribe(daemon, "cmd/lamp");
  try {
    await page.click('a[href="#publish"]');
    await page.fill("#pb-topic", "cmd/lamp");
    await page.fill("#pb-event", "set");
    await page.fill("#pb-data", '{"on": true}');
    await page.check("#pb-retain");
    await page.click('#pb-form button[type="submit"]');
    await page.waitForSelector('#pb-result:text("published")');
    await until(() => device.lines.includes('{"on":true}'), "the device to receive the publish");
    await shot(page, "publish");
  } finally {
    device.stop();
    await page.context().close();
  }
});

test("disconnecting a WebSocket client from the clients page closes it and removes its row", async () => {
  const page = await dashboard();
  const victim = new Client(daemon.wsUrl(), { WebSocket, reconnect: false, user: "victim" });
  try {
    await victim.subscribe("room/lobby").ready;
    await page.click('a[href="#clients"]');
    const button = `#cl-ws [data-client="${victim.clientId}"]`;
    await page.waitForSelector(button);
    await shot(page, "clients");
    const closed = new Promise((resolve) => victim.on("state", (s) => s !== "connected" && resolve(s)));
    await page.click(button);
    await closed;
    await page.waitForSelector(button, { state: "detached" });
  } finally {
    await victim.close();
    await page.context().close();
  }
});

/** An MQTT 3.1.1 device in raw bytes: CONNECT (client id, a will), CONNACK awaited. */
async function rawDevice(id, willTopic, willMessage) {
  const str = (t) => {
    const b = Buffer.from(t);
    return Buffer.concat([Buffer.from([b.length >> 8, b.length & 255]), b]);
  };
  // Protocol "MQTT" level 4; flags: clean session, will (QoS 0); keep-alive 60 s.
  const body = Buffer.concat([str("MQTT"), Buffer.from([4, 0x06, 0, 60]), str(id), str(willTopic), str(willMessage)]);
  const socket = net.connect(daemon.mqttPort, "127.0.0.1");
  const closed = new Promise((resolve) => socket.on("close", resolve));
  const connack = new Promise((resolve) => socket.once("data", resolve));
  socket.write(Buffer.concat([Buffer.from([0x10, body.length]), body]));
  assert.deepEqual([...(await connack)], [0x20, 2, 0, 0]);
  return { socket, closed };
}

test("disconnecting an MQTT device from the clients page closes its connection, and its will fires", async () => {
  const page = await dashboard();
  const device = await rawDevice("dash-kick", "dev/dash-kick/will", "kicked");
  const watcher = await mqttSubscribe(daemon, "dev/dash-kick/will");
  try {
    await page.click('a[href="#clients"]');
    const button = '#cl-mqtt [data-client="mqtt:dash-kick"]';
    await page.waitForSelector(button);
    await shot(page, "clients-mqtt");
    await page.click(button);
    // The device sees its TCP connection end, and its will reaches another device.
    await device.closed;
    await until(() => watcher.lines.includes("kicked"), "the device's will");
    await page.waitForSelector(button, { state: "detached" });
  } finally {
    device.socket.destroy();
    watcher.stop();
    await page.context().close();
  }
});

test("the topics page lists subscribers and retained values, and clears one", async () => {
  const page = await dashboard();
  try {
    await mqttPublish(daemon, "config/a", '{"mode":"eco"}', ["-r"]);
    await mqttPublish(daemon, "config/b", "keep", ["-r"]);
    await page.click('a[href="#topics"]');
    await page.waitForSelector('#tp-subs td:text("$devices/+")');
    await page.fill("#tp-filter", "config/#");
    await page.click('#tp-form button[type="submit"]');
    await page.waitForSelector('#tp-retained td:text("config/a")');
    await page.waitForSelector('#tp-retained td:text("config/b")');
    await shot(page, "topics");
    await page.click('#tp-retained tr:has(td:text("config/a")) button');
    await page.waitForSelector('#tp-retained td:text("config/a")', { state: "detached" });
    // Gone from the daemon, not only from the page: a new subscriber gets only config/b.
    const probe = await mqttSubscribe(daemon, "config/#", ["-W", "2"]);
    try {
      await until(() => probe.lines.includes("keep"), "config/b's retained value");
      assert.ok(!probe.lines.some((l) => l.includes("eco")), probe.lines.join("\n"));
    } finally {
      probe.stop();
    }
  } finally {
    await page.context().close();
  }
});

test("the topics page shows a topic's history and who is present", async () => {
  const page = await dashboard();
  const ann = new Client(daemon.wsUrl(), { WebSocket, reconnect: false, user: "ann" });
  try {
    for (const n of [1, 2, 3]) await mqttPublish(daemon, "log/boiler", `{"n":${n}}`);
    await ann.subscribe("room/kitchen").ready;
    await page.click('a[href="#topics"]');
    await page.fill("#hs-topic", "log/boiler");
    await page.click('#hs-form button[type="submit"]');
    await page.waitForSelector("#hs-table tbody tr:nth-child(3)");
    assert.match(await page.textContent("#hs-table"), /"n": 1[\s\S]*"n": 2[\s\S]*"n": 3/);
    await page.fill("#hs-topic", "not-kept/x");
    await page.click('#hs-form button[type="submit"]');
    await page.waitForFunction(() => document.getElementById("hs-error").textContent !== "");
    await page.fill("#pr-topic", "room/kitchen");
    await page.click('#pr-form button[type="submit"]');
    await page.waitForSelector('#pr-table td:text("ann")');
  } finally {
    await ann.close();
    await page.context().close();
  }
});

test("recordings: start, publish, stop, replay at 10x and watch the progress reach the end", async () => {
  const page = await dashboard();
  const listener = await mqttSubscribe(daemon, "rec/#");
  try {
    await page.click('a[href="#recordings"]');
    await page.fill("#rc-name", "kitchen test");
    await page.fill("#rc-topics", "rec/#");
    await page.fill("#rc-notes", "from the dashboard test");
    await page.click('#rc-form button[type="submit"]');
    await page.waitForSelector('#rc-table td:text("kitchen test")');
    for (const n of [1, 2, 3, 4, 5]) await mqttPublish(daemon, "rec/kitchen", `r${n}`);
    await until(() => listener.lines.filter((l) => /^r\d$/.test(l)).length === 5, "the five publishes");
    await page.click("[data-stop]");
    await page.waitForSelector("[data-replay]");
    assert.match(await page.textContent("#rc-table"), /kitchen test\s*stopped\s*5/);
    await page.fill("#rc-speed", "10");
    await page.click("[data-replay]");
    await page.waitForSelector('#rp-table tr:has-text("finished") [data-replay-progress]:has-text("5/5")');
    await shot(page, "recordings");
    // Replayed for real: the device heard every message a second time.
    await until(() => listener.lines.filter((l) => /^r\d$/.test(l)).length === 10, "the five replayed messages");
  } finally {
    listener.stop();
    await page.context().close();
  }
});

test("webhooks: a failed delivery shows as a dead letter, and Retry all delivers it", async () => {
  const page = await dashboard();
  try {
    await mqttPublish(daemon, "hooked/boiler", '{"alarm":true}');
    await page.click('a[href="#webhooks"]');
    await page.waitForSelector('[data-retry-all="alerts"]', { timeout: 15_000 });
    assert.match(await page.textContent("#wh-dead"), /500/);
    await shot(page, "webhooks");
    hookStatus = 200;
    await page.click('[data-retry-all="alerts"]');
    await until(() => hooked.some((b) => b.includes("hooked/boiler")), "the retried delivery");
    await page.waitForSelector('[data-retry-all="alerts"]', { state: "detached", timeout: 15_000 });
  } finally {
    await page.context().close();
  }
});

test("the bridges page shows a bridge's state, its queue while the other broker is down, and the error", async () => {
  const page = await dashboard();
  const state = '#br-table [data-bridge="up"]';
  try {
    await page.click('a[href="#bridges"]');
    await page.waitForSelector(`${state}:text("connected")`);
    await mosquitto.stop();
    await page.waitForSelector(`${state}:text("down")`);
    for (const n of [1, 2, 3]) await mqttPublish(daemon, "up/reading", String(n));
    await page.waitForSelector('#br-table [data-queue="up"]:text-matches("^3 msgs")');
    assert.notEqual(await page.textContent('#br-table [data-error="up"]'), "");
    await shot(page, "bridges");
    // Back up: the queue drains into the other broker.
    await mosquitto.start();
    await page.waitForSelector(`${state}:text("connected")`, { timeout: 15_000 });
    await page.waitForSelector('#br-table [data-queue="up"]:text-matches("^0 msgs")', { timeout: 15_000 });
  } finally {
    await page.context().close();
  }
});

test("every page fits a phone's width (nothing scrolls sideways but a table)", async () => {
  const page = await dashboard(390);
  try {
    for (const name of ["overview", "clients", "devices", "topics", "live", "publish", "recordings", "webhooks", "bridges"]) {
      await page.click(`a[href="#${name}"]`);
      await page.waitForSelector(`#${name}:not([hidden])`);
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `${name} is ${overflow} px wider than the phone`);
    }
  } finally {
    await page.context().close();
  }
});

test("the first load (login, then the overview) transfers less than 150 KB", async () => {
  const page = await newPage();
  const context = page.context();
  const responses = [];
  page.on("response", (r) => responses.push(r));
  try {
    await page.goto(`http://${daemon.http}/dashboard/`);
    await page.fill("#token", ADMIN);
    await page.click("#login button");
    await page.waitForSelector("#overview:not([hidden]) .stat");
    await page.waitForLoadState("networkidle");
    let total = 0;
    const files = {};
    for (const r of responses) {
      const { responseBodySize, responseHeadersSize } = await r.request().sizes();
      total += responseBodySize + responseHeadersSize;
      const name = new URL(r.url()).pathname;
      files[name] = (files[name] ?? 0) + responseBodySize;
    }
    console.log(`dashboard first load: ${total} bytes in ${responses.length} responses`, files);
    assert.ok(total < 150 * 1024, `${total} bytes`);
  } finally {
    await context.close();
  }
});

test("with [cluster] on, the overview lists the live boxes, and a stopped box drops out", async (t) => {
  const redis = await startRedis();
  if (!redis) return t.skip("redis-server is not installed");
  const box = (node) => `[cluster]\nenabled = true\nredis = ["${redis.url}"]\nnode_id = "${node}"\nnode_ttl = "900ms"\n`;
  const a = await startDaemon({ extra: box("box-a") });
  const b = await startDaemon({ extra: box("box-b") });
  const single = await dashboard();
  const page = await dashboard(1100, a);
  try {
    await single.waitForSelector("#overview:not([hidden]) .stat");
    assert.equal(await single.isVisible("#ov-cluster"), false, "no cluster card without [cluster]");
    const nodes = () => page.textContent("#ov-nodes");
    await until(async () => /box-a \(this box\)/.test(await nodes()) && /box-b/.test(await nodes()), "both boxes listed");
    const text = await nodes();
    assert.ok(text.includes(b.http), `box-b's HTTP address in ${text}`);
    await shot(page, "overview-cluster");
    await b.dispose();
    await until(async () => !/box-b/.test(await nodes()), "the stopped box to drop out");
    assert.match(await nodes(), /box-a \(this box\)/);
  } finally {
    await page.context().close();
    await single.context().close();
    await b.dispose();
    await a.dispose();
    await redis.dispose();
  }
});

test("no page broke the Content-Security-Policy", () => {
  assert.deepEqual(violations, []);
});
