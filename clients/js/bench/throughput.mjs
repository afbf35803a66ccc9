// Messages per second one Node subscriber receives through the SDK, against a minimal
// loop on the same WebSocket implementation (the `ws` package: parse, count), in the
// same run against the same daemon. A child process publishes, so this process's CPU
// time is the subscriber's alone: besides the wall-clock rate (bounded by the daemon
// and the publisher), it reports messages per CPU-second of the subscriber, the rate
// one core could sustain.
//
//   SWITCHBOARD_BIN=target/release/switchboard node bench/throughput.mjs [messages]

import { fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { Client } from "../src/index.js";
import { startDaemon } from "../test/daemon.mjs";

const N = Number(process.argv[2] ?? 200_000);

if (process.argv[2] === "publish") {
  // The publisher: pipelined `pub` frames, held back only by the socket's buffer.
  const [url, topic, count] = process.argv.slice(3);
  const ws = new WebSocket(url);
  ws.on("open", async () => {
    const payload = "x".repeat(40);
    for (let i = 0; i < Number(count); i++) {
      ws.send(`{"op":"pub","topic":"${topic}","data":{"i":${i},"p":"${payload}"}}`);
      if (ws.bufferedAmount > 1 << 20) await new Promise((r) => setTimeout(r, 1));
    }
  });
  ws.on("message", () => {}); // the replies
  process.on("message", () => ws.close());
} else {
  await main();
}

function publisher(url, topic) {
  return fork(fileURLToPath(import.meta.url), ["publish", url, topic, String(N)], { stdio: "inherit" });
}

/** Subscribes with `mode`, publishes N messages from a child, and times their arrival. */
async function round(daemon, mode, index) {
  const topic = `bench/${mode}/${index}`;
  let received = 0;
  let lagged = 0;
  let first = 0;
  let done;
  const finished = new Promise((resolve) => (done = resolve));
  const count = () => {
    if (received++ === 0) first = performance.now();
    if (received === N) done();
  };
  let close;
  if (mode === "sdk") {
    const sb = new Client(daemon.wsUrl(), { WebSocket });
    sb.on("lagged", (l) => (lagged += l.dropped));
    await sb.subscribe(topic, { onMessage: count }).ready;
    close = () => sb.close();
  } else {
    const ws = new WebSocket(daemon.wsUrl());
    await new Promise((resolve) => {
      ws.onmessage = (e) => {
        const frame = JSON.parse(e.data);
        if (frame.op === "msg") count();
        else if (frame.op === "lagged") lagged += frame.dropped;
        else if (frame.op === "ok") resolve();
        else if (frame.op === "welcome") ws.send(JSON.stringify({ op: "sub", id: 1, topic }));
      };
    });
    close = () => ws.close();
  }
  const cpu = process.cpuUsage();
  const child = publisher(daemon.wsUrl(), topic);
  // Stops early if the server dropped messages for this slow subscriber.
  const idle = setInterval(() => lagged > 0 && received + lagged >= N && done(), 100);
  await finished;
  const wall = (performance.now() - first) / 1000;
  const used = process.cpuUsage(cpu);
  clearInterval(idle);
  child.send("stop");
  await close();
  const cpuSeconds = (used.user + used.system) / 1e6;
  return { mode, received, lagged, perSecond: received / wall, perCpuSecond: received / cpuSeconds };
}

async function main() {
  const daemon = await startDaemon();
  try {
    const results = [];
    for (let i = 0; i < 6; i++) {
      const r = await round(daemon, i % 2 === 0 ? "raw" : "sdk", i);
      results.push(r);
      console.log(
        `${r.mode.padEnd(4)} received ${r.received} (server dropped ${r.lagged}): ` +
          `${Math.round(r.perSecond).toLocaleString("en")} msg/s wall, ` +
          `${Math.round(r.perCpuSecond).toLocaleString("en")} msg per subscriber CPU-second`,
      );
    }
    const best = (mode, key) => Math.max(...results.filter((r) => r.mode === mode).map((r) => r[key]));
    console.log(
      `SDK / minimal loop: ${(best("sdk", "perSecond") / best("raw", "perSecond")).toFixed(2)}× wall, ` +
        `${(best("sdk", "perCpuSecond") / best("raw", "perCpuSecond")).toFixed(2)}× per CPU-second`,
    );
  } finally {
    await daemon.dispose();
  }
}
