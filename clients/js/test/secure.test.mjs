// The SDK's end-to-end encryption (src/secure.js) against the real daemon: keys
// registered and found in its registry, sealed messages, a room whose removed member
// cannot read after the rotation, history across epochs, and every message that does
// not open reported as `undecryptable` with its reason, never dropped.

import assert from "node:assert/strict";
import { test } from "node:test";
import { E2E, memoryStore } from "../src/secure.js";
import { jwt, next, now, useDaemon } from "./daemon.mjs";

const suite = useDaemon();

/** A connected user with an E2E (RSA-2048: quicker to generate; the default is 3072). */
async function member(user, store = memoryStore()) {
  const client = suite.client({ token: jwt({ sub: user, exp: now() + 3600, publish: ["log/#"], subscribe: ["log/#"] }) });
  await client.connected();
  return { client, e2e: await E2E.create(client, { store, bits: 2048 }), store };
}

/** Collects a subscription's `message` and `undecryptable` events. */
async function collect(sub) {
  const got = { message: [], undecryptable: [], roomKey: [] };
  for (const type of Object.keys(got)) sub.on(type, (v) => got[type].push(v));
  await sub.ready;
  return got;
}

async function waitFor(list, n, what) {
  const deadline = Date.now() + 10_000;
  while (list.length < n) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(list)}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test("a key pair is made once per store, registered, and found in the registry", async () => {
  const a = await member("kim");
  assert.equal(a.e2e.user, "kim");
  assert.equal(a.e2e.jwk.kid, a.e2e.kid);
  assert.equal((await a.store.get("keypair:kim")).privateKey.extractable, false);
  const again = await E2E.create(a.client, { store: a.store });
  assert.equal(again.kid, a.e2e.kid, "the stored key pair is reused");
  assert.deepEqual((await a.e2e.keysOf("kim")).map((k) => k.kid), [a.e2e.kid]);
  assert.match(a.e2e.fingerprint, /^([0-9a-f]{4} ){15}[0-9a-f]{4}$/);
});

test("a sealed message opens for its recipient; the others report it undecryptable", async () => {
  const [alice, bob, eve] = await Promise.all(["alice", "bob", "eve"].map((u) => member(u)));
  const [toBob, toEve] = await Promise.all([bob, eve].map((m) => collect(m.e2e.subscribe("log/dm"))));
  await alice.e2e.publishSealed("log/dm", { text: "hi bob" }, { to: ["bob"] });
  await waitFor(toBob.message, 1, "bob's message");
  assert.deepEqual(toBob.message[0].data, { text: "hi bob" });
  assert.equal(toBob.message[0].e2e.from, "alice");
  assert.equal(toBob.message[0].e2e.kind, "sealed");
  await waitFor(toEve.undecryptable, 1, "eve's report");
  assert.equal(toEve.undecryptable[0].error.code, "not_addressed");
  assert.equal(toEve.message.length, 0);
});

test("replays, moved envelopes, plaintext and tampering are reported with their reason", async () => {
  const [alice, bob] = await Promise.all(["alice2", "bob2"].map((u) => member(u)));
  const raw = alice.client.subscribe("log/replay");
  await raw.ready;
  const got = await collect(bob.e2e.subscribe("log/+"));
  const envelopeArrives = next(raw, "message");
  await alice.e2e.publishSealed("log/replay", "once", { to: ["bob2"] });
  const envelope = (await envelopeArrives).data;
  await waitFor(got.message, 1, "the original");

  await alice.client.publish("log/replay", envelope); // the same bytes again
  await alice.client.publish("log/moved", envelope); // to another topic
  await alice.client.publish("log/replay", { text: "plain" });
  const flipped = { ...envelope, tag: envelope.tag.startsWith("A") ? `B${envelope.tag.slice(1)}` : `A${envelope.tag.slice(1)}` };
  await alice.client.publish("log/replay", flipped);
  await waitFor(got.undecryptable, 4, "four reports");
  assert.deepEqual(
    got.undecryptable.map((m) => [m.topic, m.error.code]),
    [
      ["log/replay", "replayed"],
      ["log/moved", "wrong_topic"],
      ["log/replay", "malformed"],
      ["log/replay", "undecryptable"],
    ],
  );
  assert.deepEqual(got.undecryptable[0].data, envelope, "reported with the envelope as it came");
  assert.equal(got.message.length, 1);
});

test("a room: members read, a removed member cannot after the rotation, history spans epochs", async () => {
  const room = "log/room";
  const [admin, bob, carol] = await Promise.all(["ann", "ben", "cat"].map((u) => member(u)));
  assert.deepEqual(await admin.e2e.createRoom(room, { members: ["ben", "cat"] }), { room, epoch: 1, keyTopic: `${room}/keys` });
  await Promise.all([bob, carol].map((m) => m.e2e.joinRoom(room)));
  const [atBob, atCarol] = await Promise.all([bob, carol].map((m) => collect(m.e2e.subscribe(room))));

  await admin.e2e.publishToRoom(room, { text: "one" });
  await waitFor(atBob.message, 1, "bob reads epoch 1");
  await waitFor(atCarol.message, 1, "carol reads epoch 1");
  assert.deepEqual([atBob.message[0].data, atBob.message[0].e2e.epoch], [{ text: "one" }, 1]);

  assert.deepEqual(await admin.e2e.removeMember(room, "cat"), { room, epoch: 2 });
  await bob.e2e.whenRoomKey(room, 2);
  await admin.e2e.publishToRoom(room, { text: "two" });
  await waitFor(atBob.message, 2, "bob reads epoch 2");
  assert.deepEqual(atBob.message[1].data, { text: "two" });
  await waitFor(atCarol.undecryptable, 1, "carol's report");
  assert.equal(atCarol.undecryptable[0].error.code, "unknown_room_key");
  assert.equal(atCarol.message.length, 1, "carol read nothing after her removal");
  assert.equal(carol.e2e.epochOf(room), 1);

  // Carol's retired key cannot write live messages either.
  await carol.e2e.publishToRoom(room, { text: "still here" });
  await waitFor(atBob.undecryptable, 1, "bob's report of the stale epoch");
  assert.equal(atBob.undecryptable[0].error.code, "stale_epoch");

  // Bob again later (a new connection, the same stored key pair): the key topic's
  // history gives both epochs, and the room's history opens across them.
  const again = await member("ben", bob.store);
  const later = again.e2e;
  assert.equal(later.kid, bob.e2e.kid);
  await later.joinRoom(room);
  assert.equal(later.epochOf(room), 2);
  const history = await collect(later.subscribe(room, { last: 10 }));
  await waitFor(history.message, 3, "the history");
  assert.deepEqual(
    history.message.map((m) => [m.data.text, m.e2e.epoch, m.history]),
    [
      ["one", 1, true],
      ["two", 2, true],
      ["still here", 1, true],
    ],
  );
  assert.equal(history.undecryptable.length, 0);
});

test("only the admin rotates, and the daemon orders epochs", async () => {
  const room = "log/ordered";
  const admin = await member("olga");
  await admin.e2e.createRoom(room);
  await assert.rejects(admin.e2e.createRoom(room), (e) => e.code === "conflict" && e.status === 409);
  const other = await member("oscar");
  await assert.rejects(other.e2e.rotateRoom(room), /not the admin/);
});

test("a room rotates on its schedule to its current members; history spans the epochs", async () => {
  const room = "log/scheduled";
  const [admin, bob, carol] = await Promise.all(["sam", "sid", "sue"].map((u) => member(u)));
  const rotated = [];
  admin.e2e.on("rotated", (r) => rotated.push(r));
  await admin.e2e.createRoom(room, { members: ["sid"], rotateEvery: 300 });
  await admin.e2e.addMember(room, "sue"); // the current epoch, and every scheduled one after
  await Promise.all([bob, carol].map((m) => m.e2e.joinRoom(room)));
  const atBob = await collect(bob.e2e.subscribe(room));
  await admin.e2e.publishToRoom(room, { text: "one" });
  await waitFor(atBob.message, 1, "bob reads epoch 1");

  // Epochs 2 and 3 come with nobody asking, and both members get them.
  await waitFor(rotated, 2, "two scheduled rotations");
  assert.deepEqual(rotated.slice(0, 2), [
    { room, epoch: 2, scheduled: true },
    { room, epoch: 3, scheduled: true },
  ]);
  await Promise.all([bob, carol].map((m) => m.e2e.whenRoomKey(room, 3)));

  // Carol is removed: the next epoch and the scheduled ones after it go to bob alone.
  const { epoch: removedAt } = await admin.e2e.removeMember(room, "sue");
  const deadline = Date.now() + 10_000;
  while (!rotated.some((r) => r.scheduled && r.epoch > removedAt)) {
    assert.ok(Date.now() < deadline, "a scheduled rotation after the removal");
    await new Promise((r) => setTimeout(r, 20));
  }
  await bob.e2e.whenRoomKey(room, removedAt + 1);
  assert.ok(carol.e2e.epochOf(room) < removedAt, `carol holds epoch ${carol.e2e.epochOf(room)}`);
  await admin.e2e.publishToRoom(room, { text: "later" });
  await waitFor(atBob.message, 2, "bob reads the scheduled epoch");
  assert.equal(atBob.message[1].data.text, "later");
  admin.e2e.close();

  // Bob again, with the same stored key pair: every epoch from the key topic's history,
  // and the room's history opens across them.
  const again = await member("sid", bob.store);
  await again.e2e.joinRoom(room);
  const history = await collect(again.e2e.subscribe(room, { last: 10 }));
  await waitFor(history.message, 2, "the history");
  assert.deepEqual(
    history.message.map((m) => [m.data.text, m.e2e.epoch === 1]),
    [
      ["one", true],
      ["later", false],
    ],
  );
  assert.equal(history.undecryptable.length, 0);
});
