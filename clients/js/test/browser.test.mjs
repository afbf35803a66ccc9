// The SDK in headless Chromium (Debian's, driven by playwright-core; nothing downloads
// a browser): pages load it from the daemon's own /sdk/ path, talk to MQTT devices
// (mosquitto_pub, mosquitto_sub) and survive a daemon restart; and the `npm pack`
// tarball works as an ES module in Node and as a <script> in the browser.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { startSiteAndDaemon } from "./chromium.mjs";
import { launchChromium, mqttPublish as publishTo, mqttSubscribe as subscribeTo, until } from "./daemon.mjs";

const run = promisify(execFile);
const root = join(dirname(fileURLToPath(import.meta.url)), "..");

let daemon;
let site;
let siteUrl;
let browser;
let scratch;
const pages = {};

/** The test site's pages, rendered when asked for (the daemon's address is known by then). */
pages["/index.html"] = () => `<!doctype html>
<script src="http://${daemon.http}/sdk/switchboard.js"></script>
<script>
  window.got = [];
  window.sb = new Switchboard.Client("ws://${daemon.http}/ws", { minReconnectDelay: 50, maxReconnectDelay: 500 });
  const sub = sb.subscribe("dev/+/temp");
  sub.on("message", (m) => got.push(m));
  sub.ready.then(() => (window.ready = true));
</script>`;
pages["/module.html"] = () => `<!doctype html>
<script type="module">
  import { Client } from "http://${daemon.http}/sdk/switchboard.mjs";
  const sb = new Client("ws://${daemon.http}/ws");
  const sub = sb.subscribe("mod/a");
  await sub.ready;
  const seen = new Promise((resolve) => sub.once("message", resolve));
  await sb.publish("mod/a", { from: "module" });
  window.result = (await seen).data;
  await sb.close();
</script>`;
pages["/pack.html"] = () => `<!doctype html>
<script src="/pkg/switchboard.js"></script>
<script>
  const sb = new Switchboard.Client("ws://${daemon.http}/ws");
  sb.publish("pack/browser", 1).then((r) => (window.result = { version: Switchboard.VERSION, seq: r.seq }));
</script>`;

before(async () => {
  // The test's own web site, so the pages have a real origin the daemon allows.
  ({ site, daemon } = await startSiteAndDaemon((req, res) => {
    if (req.url === "/pkg/switchboard.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      return res.end(readFileSync(join(scratch, "node_modules/switchboard-client/dist/switchboard.js")));
    }
    const page = pages[req.url];
    res.writeHead(page ? 200 : 404, { "content-type": "text/html" });
    res.end(page ? page() : "");
  }));
  siteUrl = site.url;
  browser = await launchChromium();
  // The package as a user gets it: packed, then installed into an empty project.
  scratch = mkdtempSync(join(tmpdir(), "sb-pack-"));
  const { stdout } = await run("npm", ["pack", "--json", "--pack-destination", scratch], { cwd: root });
  const [{ filename }] = JSON.parse(stdout);
  writeFileSync(join(scratch, "package.json"), JSON.stringify({ name: "scratch", private: true, type: "module" }));
  await run("npm", ["install", "--offline", "--no-audit", "--no-fund", join(scratch, filename)], { cwd: scratch });
});

after(async () => {
  await browser?.close();
  await daemon?.dispose();
  await new Promise((resolve) => (site ? site.close(resolve) : resolve()));
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

const mqttPublish = (topic, payload) => publishTo(daemon, topic, payload);
const mqttSubscribe = (topic) => subscribeTo(daemon, topic);

test("a page loads the SDK from the daemon, hears an MQTT device, publishes to one, and survives a restart", async () => {
  const page = await browser.newPage();
  try {
    await page.goto(`${siteUrl}/index.html`);
    await page.waitForFunction(() => window.ready === true, null, { timeout: 10_000 });

    await mqttPublish("dev/n1/temp", "21.5");
    await page.waitForFunction(() => window.got.length === 1, null, { timeout: 10_000 });
    const heard = await page.evaluate(() => window.got[0]);
    assert.deepEqual([heard.topic, heard.data], ["dev/n1/temp", 21.5]);
    assert.ok(heard.from.startsWith("mqtt:"), heard.from);

    const device = await mqttSubscribe("cmd/n1");
    try {
      const { seq } = await page.evaluate(() => window.sb.publish("cmd/n1", "on"));
      assert.equal(seq, 1);
      await until(() => device.lines.includes("on"), "the device to receive `on`");
    } finally {
      device.stop();
    }

    const before = await page.evaluate(() => window.sb.clientId);
    await daemon.restart();
    await page.waitForFunction((id) => window.sb.state === "connected" && window.sb.clientId !== id, before, {
      timeout: 15_000,
    });
    // Re-subscribed by itself: the device's next reading arrives (on the new MQTT port).
    await until(async () => {
      await mqttPublish("dev/n2/temp", "19");
      return page.evaluate(() => window.got.some((m) => m.topic === "dev/n2/temp"));
    }, "a reading after the restart");
  } finally {
    await page.close();
  }
});

test("a page imports the ES module build from the daemon (CORS for an allowed origin)", async () => {
  const page = await browser.newPage();
  try {
    await page.goto(`${siteUrl}/module.html`);
    await page.waitForFunction(() => window.result !== undefined, null, { timeout: 10_000 });
    assert.deepEqual(await page.evaluate(() => window.result), { from: "module" });
  } finally {
    await page.close();
  }
});

test("the npm pack tarball: an ES module in Node, a <script> in the browser", async () => {
  const script = `
    import { Client, VERSION } from "switchboard-client";
    const sb = new Client(${JSON.stringify(daemon.wsUrl())});
    const { seq } = await sb.publish("pack/node", "hi");
    await sb.close();
    console.log(VERSION, seq);`;
  // Node's own WebSocket (a flag on Node 20): the SDK finds the global.
  const { stdout } = await run(process.execPath, ["--experimental-websocket", "--input-type=module", "-e", script], {
    cwd: scratch,
    timeout: 10_000,
  });
  const version = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).version;
  assert.equal(stdout.trim(), `${version} 1`);

  const page = await browser.newPage();
  try {
    await page.goto(`${siteUrl}/pack.html`);
    await page.waitForFunction(() => window.result !== undefined, null, { timeout: 10_000 });
    assert.deepEqual(await page.evaluate(() => window.result), { version, seq: 1 });
  } finally {
    await page.close();
  }
});
