// The demo apps (/demo/, demos/README.md) in headless Chromium against the real daemon:
// chat between browser contexts, and the weather and webcam pages fed by their
// simulators (demos/*/*.py, over MQTT). Screenshots as dashboard.test.mjs saves them.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { ADMIN, jwt, launchChromium, now, startDaemon } from "./daemon.mjs";

const run = promisify(execFile);
const demos = join(dirname(fileURLToPath(import.meta.url)), "../../../demos");
const shots = resolve(process.env.SCREENSHOT_DIR ?? mkdtempSync(join(tmpdir(), "sb-shots-")));
mkdirSync(shots, { recursive: true });

let daemon;
let browser;
/** Content-Security-Policy violations any page reported. */
const violations = [];

before(async () => {
  daemon = await startDaemon({ extra: "[http]\ndemos = true\n" });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await daemon?.dispose();
});

async function open(path, d = daemon) {
  const context = await browser.newContext({ viewport: { width: 900, height: 640 } });
  const page = await context.newPage();
  page.on("console", (m) => m.text().includes("Content Security Policy") && violations.push(m.text()));
  await page.goto(`http://${d.http}/demo/${path}`);
  return page;
}

/** A chat page in `room`: anonymous as `name`, or signed in as `name` with encryption on. */
async function enter(name, room = "lobby", { encrypted = false, d = daemon } = {}) {
  const token = jwt({ sub: name, exp: now() + 3600, publish: ["room/#"], subscribe: ["room/#"] });
  const page = await open(encrypted ? `chat.html#token=${token}` : "chat.html", d);
  await page.fill("#name", name);
  await page.fill("#room", room);
  if (encrypted) await page.check("#encrypted");
  await page.click("#join button");
  await page.waitForSelector("#room-view:not([hidden])");
  return page;
}

test("the demos are off unless [http] demos = true", async () => {
  const off = await startDaemon();
  try {
    assert.equal((await fetch(`http://${off.http}/demo/chat.html`)).status, 404);
  } finally {
    await off.dispose();
  }
  const res = await fetch(`http://${daemon.http}/demo/`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-security-policy"), /script-src 'self'/);
});

test("chat: members see each other; a public message reaches the room, a private one only its addressee", async () => {
  const ada = await enter("ada");
  const bob = await enter("bob");
  const eve = await enter("eve");
  try {
    for (const page of [ada, bob, eve]) {
      for (const name of ["ada", "bob", "eve"]) await page.waitForSelector(`#members li:has-text("${name}")`);
    }
    await bob.fill("#text", "hello everyone");
    await bob.click("#say button");
    for (const page of [ada, bob, eve]) await page.waitForSelector('#messages li:text("bob: hello everyone")');

    await bob.selectOption("#to", { label: "only ada" });
    await bob.fill("#text", "a secret for ada");
    await bob.click("#say button");
    await ada.waitForSelector('#messages li.private:text("bob → you: a secret for ada")');
    await bob.waitForSelector('#messages li.private:text("you → ada: a secret for ada")');
    // Eve has had the public message and the round trip of a later one: the private one
    // would have arrived by now.
    await ada.fill("#text", "after");
    await ada.click("#say button");
    await eve.waitForSelector('#messages li:text("ada: after")');
    assert.doesNotMatch(await eve.textContent("#messages"), /secret/);
    await bob.screenshot({ path: join(shots, "demo-chat.png") });

    await eve.context().close();
    await ada.waitForSelector('#members li:has-text("eve")', { state: "detached" });
  } finally {
    for (const page of [ada, bob]) await page.context().close();
  }
});

/** Every file under `dir`, read. */
function filesUnder(dir) {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile())
    .map((e) => readFileSync(join(e.parentPath ?? e.path, e.name)));
}

test("chat: an encrypted room — members read each other; the store and a page without the key hold envelopes only", async () => {
  // Its own daemon, with a history on the rooms, stopped at the end to read its store.
  const d = await startDaemon({ extra: '[http]\ndemos = true\n[[history.topics]]\nfilter = "room/+"\nkeep = 100\n' });
  const pages = [];
  try {
    const ada = await enter("ada", "secret", { encrypted: true, d }); // first: creates the room's key
    pages.push(ada);
    await ada.waitForSelector('#e2e-status:has-text("key epoch 1")');
    const bob = await enter("bob", "secret", { encrypted: true, d });
    pages.push(bob);
    await bob.waitForSelector('#e2e-status:has-text("key epoch 1")'); // shared by ada
    const eve = await enter("eve", "secret", { d }); // in the topic, not in the encrypted room
    pages.push(eve);
    for (const name of ["ada", "bob", "eve"]) await ada.waitForSelector(`#members li:has-text("${name}")`);

    const plan = "meet at the north gate at noon";
    await ada.fill("#text", plan);
    await ada.click("#say button");
    for (const page of [ada, bob]) await page.waitForSelector(`#messages li.e2e:text("ada: ${plan}")`);
    await bob.fill("#text", "noted, bring the map");
    await bob.click("#say button");
    await ada.waitForSelector('#messages li.e2e:text("bob: noted, bring the map")');
    await eve.waitForFunction(() => document.querySelectorAll("#messages li.encrypted").length === 2);
    // A clear message from eve: members see it marked, and the store scan must find it.
    await eve.fill("#text", "a clear control line");
    await eve.click("#say button");
    await bob.waitForSelector('#messages li.plain:text("eve: a clear control line (not encrypted)")');
    assert.doesNotMatch(await eve.textContent("#messages"), /north gate|bring the map/);
    await bob.screenshot({ path: join(shots, "demo-chat-e2e.png") });
    // Bob leaves: ada, the admin, rotates so he reads nothing sent after.
    await bob.context().close();
    pages.splice(pages.indexOf(bob), 1);
    await ada.waitForSelector('#e2e-status:has-text("key epoch 2")');

    // The daemon's history holds the envelopes, not the words.
    const res = await fetch(`http://${d.http}/api/v1/history?topic=room/secret&last=10`, {
      headers: { authorization: `Bearer ${ADMIN}` },
    });
    const history = await res.json();
    assert.equal(history.messages.length, 3, JSON.stringify(history));
    const envelopes = history.messages.filter((m) => typeof m.data?.ciphertext === "string");
    assert.equal(envelopes.length, 2);
    assert.doesNotMatch(JSON.stringify(history), /north gate|bring the map/);

    // So does its store on disk, after a clean stop.
    await d.stop();
    const disk = Buffer.concat(filesUnder(join(d.dir, "data")));
    assert.ok(disk.includes("a clear control line"), "the scan does not see what the daemon stored");
    assert.ok(disk.includes(envelopes[0].data.ciphertext.slice(0, 40)), "the envelope was not stored");
    for (const words of ["north gate", "bring the map"]) assert.ok(!disk.includes(words), `"${words}" reached the store`);
  } finally {
    for (const page of pages) await page.context().close();
    await d.dispose();
  }
});

test("weather: a card per station and a chart, fed by the station simulator over MQTT", async () => {
  const page = await open("weather.html");
  try {
    await run("python3", [join(demos, "weather/stations.py"), "--port", String(daemon.mqttPort), "--stations", "2", "--count", "3", "--interval", "0.1"]);
    await page.waitForSelector('[data-station="station-1"]:has-text("°C")');
    await page.waitForSelector('[data-station="station-2"]:has-text("°C")');
    assert.match(await page.textContent('[data-station="station-1"]'), /-?\d+(\.\d)? °C/);
    await page.screenshot({ path: join(shots, "demo-weather.png") });
    // The retained current value: a page opened later shows the stations at once.
    const late = await open("weather.html");
    await late.waitForSelector('[data-station="station-2"]:has-text("°C")');
    await late.context().close();
  } finally {
    await page.context().close();
  }
});

test("webcam: the viewer shows the JPEG frames the camera publishes over MQTT", async () => {
  const page = await open("webcam.html");
  try {
    await run("python3", [join(demos, "webcam/camera.py"), "--port", String(daemon.mqttPort), "--count", "4", "--fps", "50"]);
    await page.waitForFunction(() => Number(document.getElementById("frame").dataset.frames) >= 1);
    const { width, src } = await page.evaluate(() => ({ width: frame.naturalWidth, src: frame.src.slice(0, 23) }));
    assert.equal(src, "data:image/jpeg;base64,");
    assert.equal(width, 320);
    await page.screenshot({ path: join(shots, "demo-webcam.png") });
  } finally {
    await page.context().close();
  }
});

test("no demo page broke the Content-Security-Policy", () => {
  assert.deepEqual(violations, []);
});
