// Credentials: the `auth` frame and the `token` query parameter, a refused token
// (4001, not retried), a refresh before expiry, and an expiry without one (4003).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { Client } from "../src/index.js";
import { jwt, next, now, startDaemon, until } from "./daemon.mjs";

let daemon;
const clients = [];
const client = (options) => {
  const sb = new Client(daemon.wsUrl(), { WebSocket, minReconnectDelay: 10, maxReconnectDelay: 50, ...options });
  clients.push(sb);
  return sb;
};

before(async () => {
  daemon = await startDaemon();
});
after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await daemon?.dispose();
});

test("a token in the first frame or in the query names the connection's user", async () => {
  for (const tokenIn of ["auth", "query"]) {
    const sb = client({ token: jwt({ sub: `alice-${tokenIn}`, exp: now() + 3600 }), tokenIn });
    const welcome = await sb.connected();
    assert.equal(welcome.user, `alice-${tokenIn}`);
    assert.equal(sb.user, `alice-${tokenIn}`);
    assert.ok(sb.expiresAt > now());
    assert.ok((await sb.ping()) >= 0);
  }
});

test("a refused token closes with 4001 and is not retried", async () => {
  const forged = jwt({ sub: "mallory", exp: now() + 3600 }).replace(/.$/, (c) => (c === "A" ? "B" : "A"));
  const sb = client({ token: forged });
  const attempts = [];
  sb.on("connecting", (e) => attempts.push(e.attempt));
  const error = await sb.connected().then(
    () => assert.fail("connected with a forged token"),
    (e) => e,
  );
  assert.equal(error.code, "closed");
  assert.equal(error.closeCode, 4001);
  assert.match(error.message, /unauthorized/);
  assert.equal(sb.state, "closed");
  assert.deepEqual(attempts, [0], "one attempt only");
});

test("getToken refreshes the token before it expires, on the same connection", async () => {
  let issued = 0;
  // Three-second tokens: refreshed halfway through their life.
  const sb = client({ getToken: () => (issued++, jwt({ sub: "bob", exp: now() + 3 })) });
  await sb.connected();
  const id = sb.clientId;
  const firstExpiry = sb.expiresAt;
  await next(sb, "refreshed", 5000);
  // Past the first token's expiry and the server's one-second leeway.
  await until(() => Date.now() > (firstExpiry + 1.5) * 1000, "the first token's expiry", 6000);
  assert.ok((await sb.ping()) >= 0);
  assert.equal(sb.clientId, id, "never reconnected");
  assert.ok(sb.expiresAt > firstExpiry);
  assert.ok(issued >= 2, `getToken called ${issued} times`);
});

test("a token that expires without a refresh closes with 4003 and the client stops", async () => {
  const sb = client({ token: jwt({ sub: "carol", exp: now() + 1 }) });
  await sb.connected();
  const gone = await next(sb, "disconnected", 6000);
  assert.deepEqual([gone.code, gone.reconnect], [4003, false]);
  assert.equal(sb.state, "closed");
});
