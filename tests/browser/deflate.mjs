// Headless Chromium against the daemon, for tests/ws_deflate.rs: a page on the daemon's
// own origin opens /ws (Chromium always offers permessage-deflate), subscribes,
// publishes a telemetry batch (Chromium compresses it when the extension is
// negotiated) and waits for it to come back. Prints one JSON line: the negotiated
// extensions and whether the message came back intact.
//
// Usage: node deflate.mjs http://127.0.0.1:PORT

import { chromium } from "playwright-core";

const base = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage();
  await page.goto(`${base}/healthz`);
  const report = await page.evaluate(async (url) => {
    const ws = new WebSocket(url);
    const frames = [];
    let wake = () => {};
    ws.onmessage = (e) => { frames.push(JSON.parse(e.data)); wake(); };
    const next = async (pred) => {
      for (;;) {
        const i = frames.findIndex(pred);
        if (i >= 0) return frames.splice(i, 1)[0];
        await new Promise((r) => { wake = r; });
      }
    };
    await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
    await next((f) => f.op === "welcome");
    ws.send(JSON.stringify({ op: "sub", topic: "browser/env", id: "s" }));
    await next((f) => f.id === "s");
    const readings = [];
    for (let i = 0; i < 40; i++) readings.push({ node: `node-${i}`, t: 21.5, h: 40.25, p: 1013.2 });
    const data = { readings };
    ws.send(JSON.stringify({ op: "pub", topic: "browser/env", data, id: "p" }));
    const ok = await next((f) => f.id === "p");
    const msg = await next((f) => f.op === "msg");
    const extensions = ws.extensions;
    ws.close();
    return { extensions, ok: ok.op, intact: JSON.stringify(msg.data) === JSON.stringify(data) };
  }, `${base.replace(/^http/, "ws")}/ws`);
  console.log(JSON.stringify(report));
} finally {
  await browser.close();
}
