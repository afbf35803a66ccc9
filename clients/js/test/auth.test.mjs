// Credentials: the `auth` frame and the `token` query parameter, a refused token
// (4001, not retried), a refresh before expiry, and an expiry without one (4003).

import assert from "node:assert/strict";
import { test } from "node:test";
import { jwt, next, now, startDaemon, until, useDaemon } from "./daemon.mjs";

const suite = useDaemon();
const client = (options) => suite.client(options);

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

test("where anonymous clients are refused: the auth frame admits a token, no token closes with 4002, not retried", async () => {
  const strict = await startDaemon({
    env: { SWITCHBOARD_AUTH_ALLOW_ANONYMOUS: "false", SWITCHBOARD_AUTH_AUTH_TIMEOUT: "1s" },
  });
  try {
    const sb = suite.client({ token: jwt({ sub: "dave", exp: now() + 3600, publish: ["strict/#"] }) }, strict.wsUrl());
    assert.equal((await sb.connected()).user, "dave");
    assert.equal((await sb.publish("strict/a", 1)).seq, 1);
    await sb.close();

    const anonymous = suite.client({}, strict.wsUrl());
    const error = await anonymous.connected().then(
      () => assert.fail("connected without a token"),
      (e) => e,
    );
    // The server waited for an `auth` frame that never came.
    assert.equal(error.closeCode, 4002, error.message);
    assert.equal(anonymous.state, "closed");
  } finally {
    await strict.dispose();
  }
});

test("a refresh to narrower permissions ends the subscriptions they no longer allow", async () => {
  const token = (subscribe) => jwt({ sub: "erin", exp: now() + 3600, subscribe });
  const sb = client({ token: token(["r/#", "keep/#"]) });
  const dropped = sb.subscribe("r/a");
  const kept = sb.subscribe("keep/a");
  await Promise.all([dropped.ready, kept.ready]);
  const ended = next(dropped, "end");
  const notice = next(sb, "unsubscribed");
  await sb.refresh(token(["keep/#"]));
  assert.equal((await ended).code, "forbidden");
  assert.deepEqual((await notice).filters, ["r/a"]);
  assert.deepEqual([dropped.state, kept.state], ["ended", "active"]);
  await rejectsWith(sb.refresh(jwt({ sub: "someone-else", exp: now() + 3600 })), "forbidden");
  assert.equal(sb.state, "connected");
});

async function rejectsWith(promise, code) {
  const error = await promise.then(
    () => assert.fail(`resolved; expected ${code}`),
    (e) => e,
  );
  assert.equal(error.code, code, error.message);
}
