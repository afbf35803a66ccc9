// Interoperability with npm `jose`, a JOSE implementation this project did not write:
// it decrypts what our JavaScript (src/e2e.js) and our Rust (the committed fixture and
// a fresh `switchboard e2e seal`) produce, and ours open what it produces, for all
// three kinds: sealed and room-key shares (General JSON, RSA-OAEP-256 + A256CBC-HS512)
// and room messages (Flattened JSON, `dir`). docs/e2e.md, "Tests".

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { FlattenedEncrypt, GeneralEncrypt, flattenedDecrypt, generalDecrypt } from "jose";

import * as e2e from "../src/e2e.js";
import { binary } from "./daemon.mjs";

const run = promisify(execFile);
const fixture = JSON.parse(readFileSync(fileURLToPath(new URL("../../../e2e/tests/vectors/switchboard.json", import.meta.url)), "utf8"));
const te = new TextEncoder();
const text = (bytes) => new TextDecoder().decode(bytes);
const publicOf = (jwk) => ({ kty: "RSA", n: jwk.n, e: jwk.e, alg: "RSA-OAEP-256", use: "enc" });

/** The fixture's private key as a CryptoKey jose takes, and as our `{privateKey, kid}`. */
const keyOf = (name) => e2e.importPrivateJwk(fixture.keys[name]);

/** A CryptoKey for encrypting to `jwk`, for jose. */
const encryptKey = (jwk) =>
  crypto.subtle.importKey("jwk", { kty: "RSA", n: jwk.n, e: jwk.e, alg: "RSA-OAEP-256", ext: true }, { name: "RSA-OAEP", hash: "SHA-256" }, true, ["encrypt"]);

/** A sealed (or room-key) envelope made by jose, in our header layout. */
async function joseSeal(plaintext, jwks, sb) {
  const enc = new GeneralEncrypt(te.encode(plaintext)).setProtectedHeader({ enc: "A256CBC-HS512", sb });
  for (const jwk of jwks) {
    enc.addRecipient(await encryptKey(jwk)).setUnprotectedHeader({ alg: "RSA-OAEP-256", kid: await e2e.thumbprint(jwk) });
  }
  return enc.encrypt();
}

const mid = () => e2e.b64url(crypto.getRandomValues(new Uint8Array(16)));

test("jose decrypts the Rust fixture's three kinds", async () => {
  const { privateKey } = await keyOf("alice");
  const { sealed, room_key: share, room } = fixture.envelopes;

  const s = await generalDecrypt(sealed.jwe, privateKey);
  assert.equal(text(s.plaintext), sealed.plaintext);
  assert.deepEqual([s.protectedHeader.enc, s.protectedHeader.sb.kind, s.protectedHeader.sb.topic], ["A256CBC-HS512", "sealed", sealed.topic]);
  assert.equal(s.unprotectedHeader.kid, fixture.keys.alice.kid, "jose found alice's entry among the recipients");

  const k = await generalDecrypt(share.jwe, privateKey);
  assert.deepEqual(JSON.parse(text(k.plaintext)), share.room_key);
  assert.deepEqual([k.protectedHeader.sb.kind, k.protectedHeader.sb.epoch], ["room-key", 1]);

  const r = await flattenedDecrypt(room.jwe, e2e.fromB64url(share.room_key.k));
  assert.equal(text(r.plaintext), room.plaintext);
  assert.deepEqual([r.protectedHeader.alg, r.protectedHeader.kid, r.protectedHeader.sb.epoch], ["dir", room.kid, 1]);

  // jose checks the tag too: a flipped bit is refused.
  const bad = { ...room.jwe, ciphertext: `${room.jwe.ciphertext.slice(0, -2)}${room.jwe.ciphertext.endsWith("AA") ? "BA" : "AA"}` };
  await assert.rejects(flattenedDecrypt(bad, e2e.fromB64url(share.room_key.k)));
});

test("jose decrypts what our JavaScript makes, of each kind", async () => {
  const bob = await keyOf("bob");
  const to = [publicOf(fixture.keys.alice), publicOf(fixture.keys.bob)];

  const sealed = await e2e.seal('{"text":"js to jose"}', to, { topic: "dm/x", from: "carol" });
  const s = await generalDecrypt(sealed, bob.privateKey);
  assert.equal(text(s.plaintext), '{"text":"js to jose"}');
  assert.equal(s.protectedHeader.sb.from, "carol");

  const key = e2e.createRoomKey("chat/js");
  const shared = await e2e.shareRoomKey(key, to, "chat/js/keys", "carol");
  const k = await generalDecrypt(shared, bob.privateKey);
  assert.deepEqual(JSON.parse(text(k.plaintext)), key);

  const message = await e2e.roomEncrypt(key, "chat/js", "carol", "room text");
  const r = await flattenedDecrypt(message, e2e.fromB64url(key.k));
  assert.equal(text(r.plaintext), "room text");
  assert.equal(r.protectedHeader.kid, "chat/js#1");
});

test("our JavaScript opens what jose makes, and applies its own checks to it", async () => {
  const bob = await keyOf("bob");
  const inbox = new e2e.Inbox(bob);
  const to = [publicOf(fixture.keys.alice), publicOf(fixture.keys.bob)];

  const sealed = await joseSeal("jose to js", to, { kind: "sealed", topic: "dm/y", from: "alice", mid: mid() });
  const got = await inbox.open("dm/y", null, sealed);
  assert.deepEqual([got.kind, text(got.plaintext)], ["message", "jose to js"]);
  await assert.rejects(inbox.open("dm/y", null, sealed), (e) => e.code === "replayed");
  await assert.rejects(new e2e.Inbox(bob).open("dm/z", null, sealed), (e) => e.code === "wrong_topic");

  const key = { room: "chat/jose", epoch: 1, k: e2e.b64url(crypto.getRandomValues(new Uint8Array(64))), nbf: 1 };
  const share = await joseSeal(JSON.stringify(key), to, { kind: "room-key", topic: "chat/jose/keys", epoch: 1, from: "alice", mid: mid() });
  assert.deepEqual((await inbox.open("chat/jose/keys", null, share)).key, key);

  const message = await new FlattenedEncrypt(te.encode('{"text":"room"}'))
    .setProtectedHeader({ alg: "dir", enc: "A256CBC-HS512", kid: "chat/jose#1", sb: { kind: "room", topic: "chat/jose", epoch: 1, from: "alice", mid: mid() } })
    .encrypt(e2e.fromB64url(key.k));
  const opened = await inbox.open("chat/jose", null, message);
  assert.deepEqual([opened.kind, text(opened.plaintext), opened.binding.epoch], ["message", '{"text":"room"}', 1]);
});

test("jose and the Rust command line: jose opens `switchboard e2e seal`, the CLI opens jose's", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sb-jose-"));
  try {
    const file = join(dir, "dana.jwk");
    await run(binary(), ["e2e", "keygen", "--bits", "2048", file]);
    const privateJwk = JSON.parse(readFileSync(file, "utf8"));
    const dana = await e2e.importPrivateJwk(privateJwk);

    const cli = execFile(binary(), ["e2e", "seal", "--to-key", `${file}.pub`, "--topic", "dm/dana", "--from", "rust"]);
    const out = new Promise((resolve, reject) => {
      let stdout = "";
      cli.stdout.on("data", (c) => (stdout += c));
      cli.on("exit", (code) => (code === 0 ? resolve(stdout) : reject(new Error(`seal exited ${code}`))));
    });
    cli.stdin.end("from the rust cli");
    const r = await generalDecrypt(JSON.parse(await out), dana.privateKey);
    assert.equal(text(r.plaintext), "from the rust cli");
    assert.deepEqual([r.protectedHeader.sb.topic, r.protectedHeader.sb.from], ["dm/dana", "rust"]);

    const sealed = await joseSeal("from jose", [publicOf(privateJwk)], { kind: "sealed", topic: "dm/dana", from: "jose", mid: mid() });
    const opened = await new Promise((resolve, reject) => {
      const child = execFile(binary(), ["e2e", "open", "--key", file, "--topic", "dm/dana"], (error, stdout, stderr) =>
        error ? reject(new Error(`${error.message}${stderr}`)) : resolve(stdout),
      );
      child.stdin.end(JSON.stringify(sealed));
    });
    assert.equal(opened.trim(), "from jose");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
