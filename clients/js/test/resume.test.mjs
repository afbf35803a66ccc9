// Resilience on history topics: a TCP relay cut again and again while 3,000 messages
// flow (every one exactly once, in order, no gap), a `gap` when the history no longer
// holds what was missed, and a daemon restart.

import assert from "node:assert/strict";
import { test } from "node:test";
import { next, relay, until, useDaemon } from "./daemon.mjs";

const suite = useDaemon();
const client = (url) => suite.client({}, url);

test("3,000 messages through a relay cut five times arrive exactly once, in order, without a gap", async () => {
  const path = await relay(suite.daemon.http);
  try {
    const reader = client(path.url);
    const publisher = client();
    const seqs = [];
    const gaps = [];
    let drops = 0;
    reader.on("gap", (g) => gaps.push(g));
    reader.on("disconnected", () => drops++);
    const sub = reader.subscribe("log/stream");
    sub.on("message", (m) => seqs.push(m.seq));
    await sub.ready;
    await publisher.connected();

    const TOTAL = 3000;
    const cuts = [300, 900, 1500, 2100, 2700];
    const publishing = (async () => {
      for (let i = 1; i <= TOTAL; i += 50) {
        const batch = [];
        for (let j = i; j < i + 50; j++) batch.push(publisher.publish("log/stream", { i: j }));
        await Promise.all(batch);
        // Cut the reader's connection while the stream flows.
        while (cuts.length > 0 && i + 50 > cuts[0]) {
          cuts.shift();
          path.cut();
        }
      }
    })();
    await publishing;
    await until(() => seqs.length >= TOTAL, `all ${TOTAL} messages (got ${seqs.length})`, 20_000);
    assert.equal(seqs.length, TOTAL, "no duplicates");
    assert.ok(
      seqs.every((s, i) => s === i + 1),
      "in order, none missing",
    );
    assert.deepEqual(gaps, []);
    assert.ok(drops >= 5, `the reader was cut ${drops} times`);
  } finally {
    await path.close();
  }
});

test("a `gap` when the history no longer holds what was missed", async () => {
  const path = await relay(suite.daemon.http);
  try {
    const reader = client(path.url);
    const publisher = client();
    const sub = reader.subscribe("short/a"); // keeps 5 messages
    const seqs = [];
    sub.on("message", (m) => seqs.push(m.seq));
    await sub.ready;
    await publisher.publish("short/a", 1);
    await until(() => seqs.length === 1, "the first message");

    path.hold();
    path.cut();
    await next(reader, "disconnected");
    for (let i = 2; i <= 21; i++) await publisher.publish("short/a", i);
    const gap = next(sub, "gap");
    path.release();
    const info = await gap;
    assert.equal(info.filter, "short/a");
    assert.equal(info.recovered, false);
    // What the history still held, then live messages, and nothing twice.
    await until(() => seqs.length === 6, "the recoverable messages");
    assert.deepEqual(seqs, [1, 17, 18, 19, 20, 21]);
    await publisher.publish("short/a", 22);
    await until(() => seqs.length === 7, "a live message");
    assert.equal(seqs.at(-1), 22);
  } finally {
    await path.close();
  }
});

test("a daemon restart: the client reconnects with backoff and resumes its history topic", async () => {
  const sb = client();
  const sub = sb.subscribe("log/restart");
  const seqs = [];
  sub.on("message", (m) => seqs.push(m.seq));
  await sub.ready;
  for (let i = 1; i <= 3; i++) await sb.publish("log/restart", i);
  await until(() => seqs.length === 3, "three messages");
  const id = sb.clientId;
  const gone = next(sb, "disconnected");
  await suite.daemon.restart();
  const dropped = await gone;
  assert.deepEqual([dropped.code, dropped.reconnect], [1001, true]);
  await until(() => sb.state === "connected" && sb.clientId !== id, "the reconnection", 15_000);
  const publisher = client();
  await publisher.publish("log/restart", 4);
  await until(() => seqs.length === 4, "the message after the restart");
  assert.deepEqual(seqs, [1, 2, 3, 4]);
});
