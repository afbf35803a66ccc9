// Heartbeats with a 200 ms interval: an idle client stays connected (the WebSocket
// answers the server's pings), and a path that goes silent without TCP noticing is
// dropped by the client after three silent intervals and replaced.

import assert from "node:assert/strict";
import { test } from "node:test";
import { next, relay, until, useDaemon } from "./daemon.mjs";

const suite = useDaemon({ env: { SWITCHBOARD_WS_HEARTBEAT_INTERVAL: "200ms" } });

test("an idle client outlives many heartbeat intervals", async () => {
  const sb = suite.client();
  const welcome = await sb.connected();
  assert.equal(welcome.heartbeat_ms, 200);
  const drops = [];
  sb.on("disconnected", (e) => drops.push(e));
  // Five intervals (nothing to wait for: the point is that nothing happens); the server
  // closes a client it does not hear from for two.
  await new Promise((r) => setTimeout(r, 1000));
  assert.deepEqual(drops, []);
  assert.equal(sb.clientId, welcome.client);
});

test("a silent path is dropped after three intervals and the client reconnects", async () => {
  const path = await relay(suite.daemon.http);
  try {
    const sb = suite.client({}, path.url);
    const welcome = await sb.connected();
    const dropped = next(sb, "disconnected", 5000);
    path.freeze(); // the server's bytes stop arriving; the socket stays open
    const drop = await dropped;
    assert.equal(drop.code, null);
    assert.match(drop.reason, /heartbeat/);
    assert.equal(drop.reconnect, true);
    await until(() => sb.state === "connected" && sb.clientId !== welcome.client, "the reconnection");
  } finally {
    await path.close();
  }
});
