// Every call of the SDK against the real daemon, the errors bad input gets, request
// correlation, close codes, and a clean exit after close().

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { test } from "node:test";
import { SwitchboardError, backoffDelay, closeAdvice, matches } from "../src/index.js";
import { ADMIN, next, relay, until, useDaemon } from "./daemon.mjs";

const suite = useDaemon();
const connect = async (options, url) => {
  const sb = suite.client(options, url);
  await sb.connected();
  return sb;
};
const rejects = async (promise, code) => {
  const error = await promise.then(
    () => assert.fail(`resolved; expected the error ${code}`),
    (e) => e,
  );
  assert.ok(error instanceof SwitchboardError, `${error}`);
  assert.equal(error.code, code, error.message);
  return error;
};

test("subscribe with wildcards, publish with acknowledgement and event, retained values flagged", async () => {
  const a = await connect();
  const b = await connect();
  const temps = a.subscribe("home/+/temperature");
  const got = [];
  temps.on("message", (m) => got.push(m));
  assert.deepEqual(await temps.ready, { epoch: null, seq: null, recovered: null, history: 0 });
  assert.equal(temps.state, "active");

  const { seq } = await b.publish("home/kitchen/temperature", { t: 21.5 }, { event: "reading", retain: true });
  assert.equal(seq, 1);
  await until(() => got.length === 1, "the message");
  assert.deepEqual(
    [got[0].topic, got[0].data, got[0].event, got[0].seq, got[0].from, got[0].retained],
    ["home/kitchen/temperature", { t: 21.5 }, "reading", 1, b.clientId, undefined],
  );
  // Not matched by the filter: not delivered (the next publish arrives alone).
  await b.publish("home/kitchen/humidity", 40);
  await b.publish("home/hall/temperature", 19);
  await until(() => got.length === 2, "the second message");
  assert.equal(got[1].topic, "home/hall/temperature");

  // A later subscriber gets the retained value, flagged; `#` matches the parent level too.
  const all = b.subscribe("home/#");
  const first = await next(all, "message");
  assert.equal(first.retained, true);
  assert.deepEqual(first.data, { t: 21.5 });
});

test("an async iterator reads messages in order and `break` unsubscribes", async () => {
  const sb = await connect();
  const sub = sb.subscribe("iter/x");
  await sub.ready;
  // The iterator buffers from the moment the loop starts.
  const reading = (async () => {
    const seen = [];
    for await (const m of sub) {
      seen.push(m.data);
      if (seen.length === 3) break;
    }
    return seen;
  })();
  for (let i = 1; i <= 3; i++) await sb.publish("iter/x", i);
  const seen = await reading;
  assert.deepEqual(seen, [1, 2, 3]);
  assert.equal(sub.state, "ended");
  const topics = await sb.request("GET", "/api/v1/topics?prefix=iter/");
  assert.deepEqual(topics.body.topics, [], "the server dropped the subscription");
});

test("bad input gets a clear error and the connection keeps serving", async () => {
  const sb = await connect();
  await rejects(sb.publish("a/#", 1), "invalid_topic");
  await rejects(sb.publish(42, 1), "invalid_argument");
  await rejects(sb.publish("a", 10n), "invalid_argument");
  await rejects(sb.send({}, 1), "invalid_argument");
  await rejects(sb.send({ client: "a", user: "b" }, 1), "invalid_argument");
  await rejects(sb.send({ client: "nobody" }, 1), "no_recipient");
  await rejects(sb.presence("nopresence/1"), "presence_disabled");
  await rejects(sb.setInfo("not an object"), "invalid_argument");
  await rejects(sb.setInfo({ pad: "x".repeat(2000) }), "invalid_info");
  await rejects(sb.call("nonsense"), "unknown_op");
  await rejects(sb.request("GET", "no-slash"), "bad_request");
  assert.throws(() => sb.subscribe(5), (e) => e.code === "invalid_argument");

  const bad = sb.subscribe("a/#/b");
  const errors = [];
  bad.on("error", (e) => errors.push(e.code));
  await rejects(bad.ready, "invalid_topic");
  assert.equal(bad.state, "ended");
  assert.deepEqual(errors, ["invalid_topic"]);
  await rejects(sb.subscribe("plain/topic", { last: 3 }).ready, "history_disabled");

  assert.ok((await sb.ping()) >= 0, "still connected");
  assert.equal(sb.state, "connected");
});

test("100 concurrent requests are each settled by their own reply", async () => {
  const sb = await connect();
  const ops = [];
  for (let i = 0; i < 100; i++) {
    if (i % 4 === 3) ops.push(sb.request("GET", `/api/v1/presence?topic=room/${i}`).then((r) => ["http", r.status]));
    else ops.push(sb.publish(`corr/${i % 7}`, i).then((r) => ["pub", r.seq]));
  }
  const results = await Promise.all(ops);
  // Each topic numbers its messages in the order they were sent: a reply matched to the
  // wrong request would show another topic's count.
  const counts = new Map();
  results.forEach(([kind, value], i) => {
    if (kind === "http") return assert.equal(value, 200, `request ${i}`);
    const topic = i % 7;
    counts.set(topic, (counts.get(topic) ?? 0) + 1);
    assert.equal(value, counts.get(topic), `publish ${i} to corr/${topic}`);
  });
});

test("direct messages to a client and to a user; presence, join, leave and display info", async () => {
  const ann1 = await connect({ user: "ann" });
  const ann2 = await connect({ user: "ann" });
  const bob = await connect({ user: "bob" });
  assert.equal(ann1.user, "ann");

  const dm = next(ann1, "dm");
  assert.deepEqual(await bob.send({ client: ann1.clientId }, { text: "hi" }, { event: "hello" }), { delivered: 1 });
  const got = await dm;
  assert.deepEqual([got.data, got.event, got.from, got.from_user], [{ text: "hi" }, "hello", bob.clientId, "bob"]);
  assert.deepEqual(await bob.send({ user: "ann" }, "both?"), { delivered: 2 });

  await ann1.setInfo({ name: "Ann" });
  const room = ann1.subscribe("room/1");
  await room.ready;
  const joined = next(ann1, "join");
  await bob.setInfo({ name: "Bob" });
  await bob.subscribe("room/1").ready;
  const join = await joined;
  assert.deepEqual([join.topic, join.client, join.user, join.info], ["room/1", bob.clientId, "bob", { name: "Bob" }]);
  const members = await ann2.presence("room/1");
  assert.deepEqual(members.map((m) => m.info?.name).sort(), ["Ann", "Bob"]);

  const left = next(ann1, "leave");
  await bob.close();
  assert.equal((await left).client, join.client);
});

test("HTTP over the WebSocket and recordings", async () => {
  const sb = await connect();
  const sub = sb.subscribe("rec/a");
  await sub.ready;
  const rec = await sb.startRecording({ name: "sdk", topics: ["rec/#"], notes: "from the SDK test" });
  assert.equal(rec.state, "recording");

  const delivered = next(sub, "message");
  const published = await sb.request("POST", "/api/v1/publish", { topic: "rec/a", data: "via http" });
  assert.equal(published.status, 200);
  assert.equal(published.body.seq, 1);
  assert.equal((await delivered).data, "via http");
  await sb.publish("rec/a", 2);
  const missing = await sb.request("GET", "/api/v1/recordings/999999");
  assert.equal(missing.status, 404);
  assert.equal(missing.body.error?.code ?? missing.body.code, "not_found");

  const stopped = await sb.stopRecording(rec.id);
  assert.deepEqual([stopped.state, stopped.messages], ["stopped", 2]);
  await rejects(sb.stopRecording(999999), "not_found");
});

test("40xx closes for good: an operator's disconnect (4005) is not retried and rejects what is pending", async () => {
  const sb = await connect();
  const events = [];
  sb.on("disconnected", (e) => events.push(e));
  const closed = next(sb, "closed");
  const r = await fetch(`http://${suite.daemon.http}/api/v1/clients/${sb.clientId}`, {
    method: "DELETE",
    headers: { authorization: `Bearer ${ADMIN}` },
  });
  assert.equal(r.status, 204);
  assert.equal((await closed).code, 4005);
  assert.deepEqual(
    events.map((e) => [e.code, e.reconnect]),
    [[4005, false]],
  );
  assert.equal(sb.state, "closed");
  const error = await rejects(sb.ping(), "closed");
  assert.equal(error.closeCode, 4005);
});

test("a drop rejects every request in flight with `disconnected`, then the client reconnects", async () => {
  const path = await relay(suite.daemon.http);
  try {
    const sb = await connect({}, path.url);
    const before = sb.clientId;
    // Replies stop coming back; the requests stay in flight until the cut.
    path.freeze();
    const inFlight = [sb.publish("drop/a", 1), sb.ping(), sb.presence("room/9")];
    await new Promise((r) => setTimeout(r, 50));
    path.cut();
    for (const p of inFlight) await rejects(p, "disconnected");
    await until(() => sb.state === "connected" && sb.clientId !== before, "the reconnection");
    assert.ok((await sb.ping()) >= 0);
    await sb.close();
  } finally {
    await path.close();
  }
});

test("backoff is full jitter under a doubling ceiling, and close codes map to the protocol's ranges", () => {
  assert.equal(backoffDelay(0, 100, 10_000, () => 0.999999), 100);
  assert.equal(backoffDelay(3, 100, 10_000, () => 0.999999), 800);
  assert.equal(backoffDelay(40, 100, 10_000, () => 0.999999), 10_000);
  assert.equal(backoffDelay(5, 100, 10_000, () => 0), 0);
  const spread = Array.from({ length: 200 }, () => backoffDelay(4, 100, 10_000));
  assert.ok(spread.every((d) => d >= 0 && d <= 1600));
  assert.ok(spread.some((d) => d < 800) && spread.some((d) => d >= 800), "spread over the window");
  assert.deepEqual(
    [4000, 4001, 4099, 4100, 4101, 4199, 4200, 4299, 1000, 1001, 1006, null].map(closeAdvice),
    ["stop", "stop", "stop", "backoff", "backoff", "backoff", "now", "now", "backoff", "backoff", "backoff", "backoff"],
  );
  assert.ok(matches("a/+/c", "a/b/c") && matches("a/#", "a") && !matches("#", "$SYS/x") && !matches("a/+", "a/b/c"));
});

test("after close() nothing keeps Node running", async () => {
  const sdk = new URL("../src/index.js", import.meta.url).href;
  const ws = new URL("../node_modules/ws/wrapper.mjs", import.meta.url).href;
  const script = `
    import { Client } from ${JSON.stringify(sdk)};
    import WebSocket from ${JSON.stringify(ws)};
    const sb = new Client(${JSON.stringify(suite.daemon.wsUrl())}, { WebSocket });
    const sub = sb.subscribe("exit/a");
    await sub.ready;
    await sb.publish("exit/a", 1);
    const late = sb.ping().catch((e) => e.code);
    await sb.close();
    console.log(await late);`;
  // Timers left behind (a heartbeat, a retry, a 10 s request timeout) would hold it
  // past the 8 s limit.
  const out = await new Promise((resolve, reject) =>
    execFile(process.execPath, ["--input-type=module", "-e", script], { timeout: 8000 }, (error, stdout, stderr) =>
      error ? reject(new Error(`${error.message}\n${stderr}`)) : resolve(stdout),
    ),
  );
  assert.equal(out.trim(), "closed", "the ping in flight was rejected by close()");
});
