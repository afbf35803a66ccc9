// End-to-end encryption in headless Chromium (Debian's, driven by playwright-core):
// pages load the SDK and its E2E module from the daemon's /sdk/ path and do the whole
// room flow on WebCrypto, their private keys non-extractable in IndexedDB.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { launchChromium, startSiteAndDaemon } from "./chromium.mjs";
import { jwt, now } from "./daemon.mjs";

let daemon;
let site;
let siteUrl;
let browser;

before(async () => {
  // A page that loads both modules from the daemon and exposes them to the test.
  ({ site, daemon } = await startSiteAndDaemon((req, res) => {
    res.writeHead(req.url === "/e2e.html" ? 200 : 404, { "content-type": "text/html" });
    res.end(
      req.url !== "/e2e.html"
        ? ""
        : `<!doctype html>
<script type="module">
  import { Client } from "http://${daemon.http}/sdk/switchboard.mjs";
  import * as E2E from "http://${daemon.http}/sdk/switchboard-e2e.mjs";
  Object.assign(window, { Client, E2E, loaded: true });
</script>`,
    );
  }));
  siteUrl = site.url;
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await daemon?.dispose();
  await new Promise((resolve) => (site ? site.close(resolve) : resolve()));
});

/** A page (its own context, so its own IndexedDB) where `user` is connected with an E2E. */
async function open(context, user) {
  const page = await context.newPage();
  await page.goto(`${siteUrl}/e2e.html`);
  await page.waitForFunction(() => window.loaded === true, null, { timeout: 10_000 });
  const token = jwt({ sub: user, exp: now() + 3600, publish: ["log/#"], subscribe: ["log/#"] });
  const info = await page.evaluate(
    async ({ url, token }) => {
      window.sb = new window.Client(url, { token });
      window.me = await window.E2E.E2E.create(window.sb, { bits: 2048 });
      window.got = { message: [], undecryptable: [] };
      // What IndexedDB holds: the CryptoKey itself, not its bytes.
      const stored = await window.E2E.indexedDbStore().get(`keypair:${window.me.user}`);
      const exported = await crypto.subtle.exportKey("jwk", stored.privateKey).then(
        () => "exported",
        (e) => e.name,
      );
      return { kid: window.me.kid, type: stored.privateKey.type, extractable: stored.privateKey.extractable, exported };
    },
    { url: daemon.wsUrl(), token },
  );
  return { page, info };
}

const listen = (page, filter, options = {}) =>
  page.evaluate(
    async ({ filter, options }) => {
      const sub = window.me.subscribe(filter, options);
      sub.on("message", (m) => window.got.message.push({ text: m.data.text, epoch: m.e2e.epoch, history: !!m.history }));
      sub.on("undecryptable", (m) => window.got.undecryptable.push(m.error.code));
      await sub.ready;
    },
    { filter, options },
  );

const count = (page, kind, n) =>
  page.waitForFunction(([kind, n]) => window.got[kind].length >= n, [kind, n], { timeout: 10_000 });

const got = (page) => page.evaluate(() => window.got);

test("a room in the browser: keys in IndexedDB, rotation on removal, history across epochs after a reload", async () => {
  const room = "log/browser-room";
  const contexts = await Promise.all([0, 1, 2].map(() => browser.newContext()));
  try {
    const [alice, bob, carol] = await Promise.all(
      ["alice", "bob", "carol"].map((user, i) => open(contexts[i], user)),
    );
    for (const { info } of [alice, bob, carol]) {
      assert.deepEqual([info.type, info.extractable, info.exported], ["private", false, "InvalidAccessError"]);
    }

    await alice.page.evaluate((room) => window.me.createRoom(room, { members: ["bob", "carol"] }), room);
    for (const m of [bob, carol]) {
      await m.page.evaluate((room) => window.me.joinRoom(room), room);
      await listen(m.page, room);
    }
    await alice.page.evaluate((room) => window.me.publishToRoom(room, { text: "one" }), room);
    await count(bob.page, "message", 1);
    await count(carol.page, "message", 1);

    await alice.page.evaluate((room) => window.me.removeMember(room, "carol"), room);
    await bob.page.evaluate((room) => window.me.whenRoomKey(room, 2), room);
    await alice.page.evaluate((room) => window.me.publishToRoom(room, { text: "two" }), room);
    await count(bob.page, "message", 2);
    await count(carol.page, "undecryptable", 1);
    assert.deepEqual((await got(bob.page)).message, [
      { text: "one", epoch: 1, history: false },
      { text: "two", epoch: 2, history: false },
    ]);
    assert.deepEqual(await got(carol.page), { message: [{ text: "one", epoch: 1, history: false }], undecryptable: ["unknown_room_key"] });

    // Bob reloads: the same key pair comes back from IndexedDB, the shares and the
    // room's history are read back, both epochs open.
    await bob.page.reload();
    await bob.page.waitForFunction(() => window.loaded === true, null, { timeout: 10_000 });
    const token = jwt({ sub: "bob", exp: now() + 3600, publish: ["log/#"], subscribe: ["log/#"] });
    const kid = await bob.page.evaluate(
      async ({ url, token, room }) => {
        window.sb = new window.Client(url, { token });
        window.me = await window.E2E.E2E.create(window.sb);
        window.got = { message: [], undecryptable: [] };
        await window.me.joinRoom(room);
        return window.me.kid;
      },
      { url: daemon.wsUrl(), token, room },
    );
    assert.equal(kid, bob.info.kid);
    await listen(bob.page, room, { last: 10 });
    await count(bob.page, "message", 2);
    assert.deepEqual(await got(bob.page), {
      message: [
        { text: "one", epoch: 1, history: true },
        { text: "two", epoch: 2, history: true },
      ],
      undecryptable: [],
    });
  } finally {
    await Promise.all(contexts.map((c) => c.close()));
  }
});
