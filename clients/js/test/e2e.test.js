// clients/js/src/e2e.js against the published vectors (RFC 7518 B.3, Wycheproof), the
// project's own fixture (e2e/tests/vectors/switchboard.json, shared with the Rust crate
// and Python), and every tampering the Rust crate refuses. Run: node --test clients/js/test/e2e.test.js

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import * as e2e from '../src/e2e.js';

const vectors = (name) =>
  JSON.parse(readFileSync(fileURLToPath(new URL(`../../../e2e/tests/vectors/${name}`, import.meta.url)), 'utf8'));
const hex = (s) => Uint8Array.from(s.match(/../g) || [], (b) => parseInt(b, 16));
const bytes = (s) => e2e.fromB64url(s);
const fixture = vectors('switchboard.json');
const key = (name) => e2e.importPrivateJwk(fixture.keys[name]);
const publicOf = (name) => ({ kty: 'RSA', n: fixture.keys[name].n, e: fixture.keys[name].e });

async function rejectsWith(promise, code, what = '') {
  await assert.rejects(promise, (e) => {
    assert.equal(e.code, code, `${what} ${e.code}: ${e.message}`);
    return true;
  });
}

test('RFC 7518 B.3 and every Wycheproof A256CBC-HS512 case', async () => {
  const file = vectors('wycheproof_a256cbc_hs512_test.json');
  let checked = 0;
  for (const group of file.testGroups) {
    for (const t of group.tests) {
      const [k, iv, aad, msg, ct, tag] = [t.key, t.iv, t.aad, t.msg, t.ct, t.tag].map(hex);
      if (t.result === 'valid') {
        assert.deepEqual(await e2e.decryptContent(k, iv, aad, ct, tag), msg, `tcId ${t.tcId}`);
        const sealed = await e2e.encryptContent(k, iv, aad, msg);
        assert.deepEqual([sealed.ciphertext, sealed.tag], [ct, tag], `tcId ${t.tcId}`);
      } else {
        await rejectsWith(e2e.decryptContent(k, iv, aad, ct, tag), 'undecryptable');
      }
      checked++;
    }
  }
  assert.equal(checked, 94);
  assert.equal(new TextDecoder().decode(hex(file.testGroups[0].tests[0].aad)), 'The second principle of Auguste Kerckhoffs');
});

test('Wycheproof RSA-OAEP-3072 SHA-256: valid ones decrypt, the rest fail', async () => {
  const group = vectors('wycheproof_rsa_oaep_3072_sha256_mgf1sha256_test.json').testGroups[0];
  const { privateKey } = await e2e.importPrivateJwk(group.privateKeyJwk);
  let [valid, invalid] = [0, 0];
  for (const t of group.tests.filter((t) => t.label === '')) {
    const got = await globalThis.crypto.subtle.decrypt({ name: 'RSA-OAEP' }, privateKey, hex(t.ct)).then(
      (b) => new Uint8Array(b),
      () => null,
    );
    if (t.result === 'valid') {
      assert.deepEqual(got, hex(t.msg), `tcId ${t.tcId}`);
      valid++;
    } else {
      assert.equal(got, null, `tcId ${t.tcId}`);
      invalid++;
    }
  }
  assert.deepEqual([valid, invalid], [10, 19]);
});

test("the project's fixture: content, OAEP items, thumbprints", async () => {
  for (const item of fixture.content) {
    const sealed = await e2e.encryptContent(bytes(item.cek), bytes(item.iv), new TextEncoder().encode(item.protected), new TextEncoder().encode(item.plaintext));
    assert.equal(e2e.b64url(sealed.ciphertext), item.ciphertext);
    assert.equal(e2e.b64url(sealed.tag), item.tag);
  }
  for (const item of fixture.oaep) {
    const { privateKey } = await key(item.key);
    const cek = new Uint8Array(await globalThis.crypto.subtle.decrypt({ name: 'RSA-OAEP' }, privateKey, bytes(item.encrypted_key)));
    assert.equal(e2e.b64url(cek), item.cek);
  }
  for (const name of ['alice', 'bob', 'carol']) {
    assert.equal(await e2e.thumbprint(fixture.keys[name]), fixture.keys[name].kid);
  }
  // RFC 7638 §3.1's example.
  const n = '0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw';
  assert.equal(await e2e.thumbprint({ n, e: 'AQAB' }), 'NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs');
  assert.throws(() => e2e.checkPublicJwk(fixture.keys.weak1024), /1024 bits/);
  assert.throws(() => e2e.checkPublicJwk(fixture.keys.alice), /private key material/);
});

test('the fixture envelopes (made by Rust) open here', async () => {
  const env = fixture.envelopes;
  for (const name of ['alice', 'bob']) {
    const inbox = new e2e.Inbox(await key(name));
    const share = await inbox.open(env.room_key.topic, null, env.room_key.jwe);
    assert.equal(share.kind, 'room-key');
    assert.deepEqual(share.key, env.room_key.room_key);
    const room = await inbox.open(env.room.topic, null, env.room.jwe);
    assert.equal(e2e.utf8(room.plaintext), env.room.plaintext);
    assert.equal(room.kid, env.room.kid);
    const sealed = await inbox.open(env.sealed.topic, 'carol', env.sealed.jwe);
    assert.equal(e2e.utf8(sealed.plaintext), env.sealed.plaintext);
  }
  await rejectsWith(e2e.openSealed(env.sealed.jwe, await key('carol')), 'not_addressed');
});

function flip(member, bit) {
  const b = bytes(member);
  b[Math.floor(bit / 8) % b.length] ^= 1 << bit % 8;
  return e2e.b64url(b);
}

test('a flipped bit anywhere, truncation or a foreign wrapped key: one opaque error', async () => {
  const bob = await key('bob');
  const jwe = await e2e.seal('{"text":"secret"}', [publicOf('bob')], { topic: 'dm/alice/bob', from: 'alice' });
  assert.equal(e2e.utf8((await e2e.openSealed(jwe, bob)).plaintext), '{"text":"secret"}');
  const ct = bytes(jwe.ciphertext);
  const variants = {
    tag: { ...jwe, tag: flip(jwe.tag, 5) },
    iv: { ...jwe, iv: flip(jwe.iv, 77) },
    ciphertext: { ...jwe, ciphertext: flip(jwe.ciphertext, 3) },
    'ciphertext last byte': { ...jwe, ciphertext: flip(jwe.ciphertext, 8 * 31 + 7) },
    header: { ...jwe, protected: flip(jwe.protected, 40) },
    truncated: { ...jwe, ciphertext: e2e.b64url(ct.slice(0, 16)) },
    'truncated tag': { ...jwe, tag: e2e.b64url(bytes(jwe.tag).slice(0, 16)) },
    'not base64url': { ...jwe, iv: `${jwe.iv}=` },
    'wrapped key': { ...jwe, recipients: [{ ...jwe.recipients[0], encrypted_key: flip(jwe.recipients[0].encrypted_key, 1000) }] },
  };
  for (const [what, altered] of Object.entries(variants)) {
    await rejectsWith(e2e.openSealed(altered, bob), 'undecryptable', what);
  }
  // A key wrapped for alice under bob's kid.
  const forAlice = await e2e.seal('x', [publicOf('alice')], { topic: 't', from: 'carol' });
  forAlice.recipients[0].header.kid = bob.kid;
  await rejectsWith(e2e.openSealed(forAlice, bob), 'undecryptable');
  // A valid tag over bad padding.
  const k = new Uint8Array(64).fill(9);
  const iv = new Uint8Array(16).fill(1);
  const aes = await globalThis.crypto.subtle.importKey('raw', k.slice(32), { name: 'AES-CBC' }, false, ['encrypt']);
  // WebCrypto always pads: of the two blocks it makes for 16 zero bytes, the first alone
  // decrypts to a block ending in 0x00, which is never valid PKCS#7. Its tag is valid.
  const twoBlocks = new Uint8Array(await globalThis.crypto.subtle.encrypt({ name: 'AES-CBC', iv }, aes, new Uint8Array(16)));
  const badPadding = twoBlocks.slice(0, 16);
  const macKey = await globalThis.crypto.subtle.importKey('raw', k.slice(0, 32), { name: 'HMAC', hash: 'SHA-512' }, false, ['sign']);
  const validTag = new Uint8Array(await globalThis.crypto.subtle.sign('HMAC', macKey, new Uint8Array([...iv, ...badPadding, 0, 0, 0, 0, 0, 0, 0, 0]))).slice(0, 32);
  await rejectsWith(e2e.decryptContent(k, iv, new Uint8Array(), badPadding, validTag), 'undecryptable');
});

test('moved, relabelled and replayed messages are named', async () => {
  const jwe = await e2e.seal('hi', [publicOf('bob')], { topic: 'dm/alice/bob', from: 'alice' });
  const inbox = new e2e.Inbox(await key('bob'));
  await rejectsWith(inbox.open('dm/alice/mallory', 'alice', jwe), 'wrong_topic');
  await rejectsWith(inbox.open('dm/alice/bob', 'carol', jwe), 'wrong_sender');
  assert.equal((await inbox.open('dm/alice/bob', 'alice', jwe)).kind, 'message');
  await rejectsWith(inbox.open('dm/alice/bob', 'alice', jwe), 'replayed');
  assert.equal((await inbox.open('dm/alice/bob', 'alice', jwe, 'history')).kind, 'message');
  await rejectsWith(inbox.open('t', null, { text: 'plain' }), 'malformed');
});

test('rotation shuts out a removed member; old epochs stay readable as history', async () => {
  const [topic, keys] = ['chat/lobby', 'e2e/keys/chat/lobby'];
  const members = ['alice', 'bob', 'carol'].map(publicOf);
  const epoch1 = e2e.createRoomKey(topic, 1);
  const share1 = await e2e.shareRoomKey(epoch1, members, keys, 'alice');
  const bob = new e2e.Inbox(await key('bob'));
  const carol = new e2e.Inbox(await key('carol'));
  for (const inbox of [bob, carol]) assert.equal((await inbox.open(keys, 'alice', share1)).kind, 'room-key');
  const old = await e2e.roomEncrypt(epoch1, topic, 'alice', 'before carol left');
  assert.equal(e2e.utf8((await carol.open(topic, 'alice', old)).plaintext), 'before carol left');

  const epoch2 = e2e.rotateRoomKey(epoch1, 2);
  const share2 = await e2e.shareRoomKey(epoch2, members.slice(0, 2), keys, 'alice');
  await rejectsWith(carol.open(keys, 'alice', share2), 'not_addressed');
  await bob.open(keys, 'alice', share2);
  const fresh = await e2e.roomEncrypt(epoch2, topic, 'alice', 'after carol left');
  await rejectsWith(carol.open(topic, 'alice', fresh), 'unknown_room_key');
  assert.equal(e2e.utf8((await bob.open(topic, 'alice', fresh)).plaintext), 'after carol left');
  const injected = await e2e.roomEncrypt(epoch1, topic, 'carol', 'forged after removal');
  await rejectsWith(bob.open(topic, 'carol', injected), 'stale_epoch');
  assert.equal(e2e.utf8((await bob.open(topic, 'alice', old, 'history')).plaintext), 'before carol left');

  const forged = { ...e2e.createRoomKey(topic, 3), epoch: 2 };
  await rejectsWith(bob.open(keys, 'carol', await e2e.shareRoomKey(forged, [publicOf('bob')], keys, 'carol')), 'inconsistent');
  await rejectsWith(bob.keys.open(await e2e.seal('x', [publicOf('bob')], { topic, from: 'a' })), 'wrong_kind');
});

test('a generated key pair: non-extractable private key, registrable public JWK', async () => {
  const me = await e2e.generateKeyPair({ bits: 2048 });
  assert.equal(me.privateKey.extractable, false);
  assert.equal(me.jwk.kid, await e2e.thumbprint(me.jwk));
  e2e.checkPublicJwk(me.jwk);
  const jwe = await e2e.seal(new Uint8Array([0, 1, 2, 255]), [me.jwk], { topic: 't', from: 'me' });
  assert.deepEqual((await e2e.openSealed(jwe, me)).plaintext, new Uint8Array([0, 1, 2, 255]));
  assert.equal(e2e.fingerprint(me.kid).length, 79);
});

test('any modulus from 2048 to 4096 bits is accepted, multiples of 8 or not; others and e ≠ 65537 are not', async () => {
  const jwkOf = async (bits) => {
    const { publicKey } = await crypto.subtle.generateKey(
      { name: 'RSA-OAEP', modulusLength: bits, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
      true,
      ['encrypt', 'decrypt'],
    );
    return crypto.subtle.exportKey('jwk', publicKey);
  };
  for (const bits of [2050, 2304]) e2e.checkPublicJwk(await jwkOf(bits));
  // The size check reads the modulus only, so odd numbers of the right length stand in.
  const odd = (bytes, first) => e2e.b64url(Uint8Array.from({ length: bytes }, (_, i) => (i === 0 ? first : 0x55)));
  e2e.checkPublicJwk({ kty: 'RSA', n: odd(512, 0xff), e: 'AQAB' });
  assert.throws(() => e2e.checkPublicJwk({ kty: 'RSA', n: odd(256, 0x7f), e: 'AQAB' }), /2047 bits is too small/);
  assert.throws(() => e2e.checkPublicJwk({ kty: 'RSA', n: odd(513, 0x01), e: 'AQAB' }), /4097 bits is too large/);
  assert.throws(() => e2e.checkPublicJwk({ kty: 'RSA', n: odd(384, 0xc1), e: 'Aw' }), /65537/);
});

test('a scheduled rotation keeps the previous epoch open for messages in flight, and only that one', async () => {
  const [topic, keys] = ['chat/lobby', 'e2e/keys/chat/lobby'];
  const bob = new e2e.Inbox(await key('bob'));
  const epoch1 = e2e.createRoomKey(topic, 1);
  const epoch2 = e2e.rotateRoomKey(epoch1, 2, { prevOpen: true });
  const epoch3 = e2e.rotateRoomKey(epoch2, 3, { prevOpen: true });
  for (const k of [epoch1, epoch2]) await bob.open(keys, 'alice', await e2e.shareRoomKey(k, [publicOf('bob')], keys, 'alice'));
  const inFlight = await e2e.roomEncrypt(epoch1, topic, 'carol', 'sent as epoch 2 began');
  assert.equal(e2e.utf8((await bob.open(topic, 'carol', inFlight)).plaintext), 'sent as epoch 2 began');
  const got = await bob.open(keys, 'alice', await e2e.shareRoomKey(epoch3, [publicOf('bob')], keys, 'alice'));
  assert.equal(got.key.prev_open, true);
  const late = await e2e.roomEncrypt(epoch1, topic, 'carol', 'two rotations late');
  await rejectsWith(bob.open(topic, 'carol', late), 'stale_epoch');
});
