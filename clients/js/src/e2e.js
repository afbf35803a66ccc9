// switchboard end-to-end encryption on WebCrypto alone (docs/e2e.md): the same JWE
// envelopes as the Rust crate `switchboard-e2e`. No dependencies; runs in browsers and
// in Node 20+ (`globalThis.crypto.subtle`).
//
// Envelopes are JWE JSON serialization (RFC 7516 §7.2): content encrypted with
// A256CBC-HS512 (RFC 7518 §5.2.5: AES-256-CBC, then HMAC-SHA-512 over header, IV and
// ciphertext, truncated to 32 bytes), keys wrapped with RSA-OAEP-256. Three kinds:
// `sealed` (a fresh key per message, wrapped for each recipient), `room` (the room's
// key for its epoch, `alg: "dir"`) and `room-key` (a sealed room key). The protected
// header binds kind, topic, epoch, sender and a message id.
//
// Before the tag verifies, every failure is the one `undecryptable` error; after it,
// errors name the problem (`wrong_topic`, `replayed`, `stale_epoch`, …).

const subtle = globalThis.crypto.subtle;
const te = new TextEncoder();

export const ENC = 'A256CBC-HS512';
export const ALG = 'RSA-OAEP-256';
/**
 * The RSA modulus sizes a registry accepts: any bit length from MIN_BITS to MAX_BITS,
 * multiples of 8 or not. Keys are generated at 3072 bits by default.
 */
export const MIN_BITS = 2048;
export const MAX_BITS = 4096;
const RSA = { name: 'RSA-OAEP', hash: 'SHA-256' };
const KINDS = ['sealed', 'room', 'room-key'];

/** Why an envelope was not opened; `code` is stable (the Rust crate's variants). */
export class OpenError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'OpenError';
    this.code = code;
  }
}

const undecryptable = () =>
  new OpenError('undecryptable', 'cannot decrypt: the envelope was altered or damaged, or not sealed for this key');
const malformed = () =>
  new OpenError('malformed', 'not a JWE envelope: expected a JSON object with protected, iv, ciphertext and tag');

// ---- bytes ----

export function b64url(bytes) {
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** Strict unpadded base64url (as RFC 7515 wants); null for anything else. */
export function fromB64url(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
  const bin = atob(text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4));
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return b64url(bytes) === text ? bytes : null; // refuses stray trailing bits
}

export const utf8 = (bytes) => new TextDecoder().decode(bytes);
const toBytes = (p) => (typeof p === 'string' ? te.encode(p) : new Uint8Array(p));

function random(n) {
  return globalThis.crypto.getRandomValues(new Uint8Array(n));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function equalConstantTime(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

// ---- A256CBC-HS512 ----

async function tagOf(macKey, aad, iv, ciphertext) {
  const key = await subtle.importKey('raw', macKey, { name: 'HMAC', hash: 'SHA-512' }, false, ['sign']);
  const al = new Uint8Array(8);
  new DataView(al.buffer).setBigUint64(0, BigInt(aad.length) * 8n);
  const mac = new Uint8Array(await subtle.sign('HMAC', key, concat(aad, iv, ciphertext, al)));
  return mac.slice(0, 32);
}

/** Encrypts with a 64-byte key and a 16-byte IV; `aad` is bytes. */
export async function encryptContent(cek, iv, aad, plaintext) {
  const aes = await subtle.importKey('raw', cek.slice(32), { name: 'AES-CBC' }, false, ['encrypt']);
  const ciphertext = new Uint8Array(await subtle.encrypt({ name: 'AES-CBC', iv }, aes, plaintext));
  return { ciphertext, tag: await tagOf(cek.slice(0, 32), aad, iv, ciphertext) };
}

/** Checks the tag (in constant time) before the padding; any failure is `undecryptable`. */
export async function decryptContent(cek, iv, aad, ciphertext, tag) {
  if (!cek || cek.length !== 64 || !iv || iv.length !== 16 || !tag || tag.length !== 32 || !ciphertext) {
    throw undecryptable();
  }
  const expected = await tagOf(cek.slice(0, 32), aad, iv, ciphertext);
  if (!equalConstantTime(expected, tag)) throw undecryptable();
  try {
    const aes = await subtle.importKey('raw', cek.slice(32), { name: 'AES-CBC' }, false, ['decrypt']);
    return new Uint8Array(await subtle.decrypt({ name: 'AES-CBC', iv }, aes, ciphertext));
  } catch {
    throw undecryptable();
  }
}

// ---- keys ----

/** RFC 7638 SHA-256 thumbprint: a key's `kid`, what people compare. */
export async function thumbprint(jwk) {
  const canonical = `{"e":"${jwk.e}","kty":"RSA","n":"${jwk.n}"}`;
  return b64url(new Uint8Array(await subtle.digest('SHA-256', te.encode(canonical))));
}

/** A thumbprint as grouped hex (`3f2a 9c01 …`), as the registry shows it. */
export function fingerprint(kid) {
  const bytes = fromB64url(kid) || new Uint8Array();
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0'));
  const groups = [];
  for (let i = 0; i < hex.length; i += 2) groups.push(hex.slice(i, i + 2).join(''));
  return groups.join(' ');
}

/** Throws unless `jwk` is an RSA public key this format may seal to. */
export function checkPublicJwk(jwk) {
  if (!jwk || jwk.kty !== 'RSA') throw new Error('an RSA public JWK is needed (kty "RSA")');
  if (['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'].some((m) => m in jwk)) {
    throw new Error('this JWK holds private key material; use the public key');
  }
  if (jwk.e !== 'AQAB') throw new Error('the public exponent must be 65537 ("AQAB")');
  const n = fromB64url(jwk.n);
  if (!n || n[0] === 0) throw new Error('"n" is not shortest unpadded base64url');
  const bits = n.length * 8 - Math.clz32(n[0]) + 24;
  if (bits < MIN_BITS) throw new Error(`RSA key of ${bits} bits is too small: at least ${MIN_BITS} bits`);
  if (bits > MAX_BITS) throw new Error(`RSA key of ${bits} bits is too large: at most ${MAX_BITS} bits`);
  if (jwk.alg !== undefined && jwk.alg !== ALG) throw new Error(`"alg" must be ${ALG}`);
}

/**
 * A new key pair. The private key is not extractable by default: keep the CryptoKey
 * itself (IndexedDB stores it by structured clone), never its bytes.
 */
export async function generateKeyPair({ bits = 3072, extractable = false } = {}) {
  const pair = await subtle.generateKey(
    { ...RSA, modulusLength: bits, publicExponent: new Uint8Array([1, 0, 1]) },
    extractable,
    ['encrypt', 'decrypt'],
  );
  const jwk = await publicJwk(pair.publicKey);
  return { privateKey: pair.privateKey, publicKey: pair.publicKey, jwk, kid: jwk.kid };
}

/** The public JWK to register: `{kty, n, e, alg, use, kid}`. */
export async function publicJwk(publicKey) {
  const j = await subtle.exportKey('jwk', publicKey);
  return { kty: 'RSA', n: j.n, e: j.e, alg: ALG, use: 'enc', kid: await thumbprint(j) };
}

/** A private JWK (as `switchboard e2e keygen` writes it) as `{privateKey, kid}`. */
export async function importPrivateJwk(jwk, { extractable = false } = {}) {
  const { kty, n, e, d, p, q, dp, dq, qi } = jwk;
  const privateKey = await subtle.importKey('jwk', { kty, n, e, d, p, q, dp, dq, qi, alg: ALG }, RSA, extractable, ['decrypt']);
  return { privateKey, kid: await thumbprint(jwk) };
}

async function importPublicJwk(jwk) {
  return subtle.importKey('jwk', { kty: 'RSA', n: jwk.n, e: jwk.e, alg: ALG, ext: true }, RSA, true, ['encrypt']);
}

// ---- envelopes ----

function newBinding(kind, topic, from, epoch) {
  const sb = { kind, topic };
  if (epoch !== undefined) sb.epoch = epoch;
  sb.from = from;
  sb.mid = b64url(random(16));
  return sb;
}

const encodeProtected = (header) => b64url(te.encode(JSON.stringify(header)));

function decodeProtected(text) {
  const bytes = fromB64url(text);
  if (!bytes) return null;
  let h;
  try {
    h = JSON.parse(utf8(bytes));
  } catch {
    return null;
  }
  const sb = h && h.sb;
  const ok =
    typeof h === 'object' &&
    typeof h.enc === 'string' &&
    sb &&
    KINDS.includes(sb.kind) &&
    typeof sb.topic === 'string' &&
    typeof sb.from === 'string' &&
    typeof sb.mid === 'string' &&
    (sb.epoch === undefined || (Number.isSafeInteger(sb.epoch) && sb.epoch >= 0));
  return ok ? h : null;
}

function parseJwe(value) {
  const v = typeof value === 'string' ? safeJson(value) : value;
  const strings = v && ['protected', 'iv', 'ciphertext', 'tag'].every((m) => typeof v[m] === 'string');
  if (!strings || (v.recipients !== undefined && !Array.isArray(v.recipients))) throw malformed();
  return { ...v, recipients: v.recipients || [] };
}

function safeJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

async function encryptJwe(protectedText, cek, plaintext, recipients) {
  const iv = random(16);
  const { ciphertext, tag } = await encryptContent(cek, iv, te.encode(protectedText), toBytes(plaintext));
  const jwe = { protected: protectedText };
  if (recipients) jwe.recipients = recipients;
  return Object.assign(jwe, { iv: b64url(iv), ciphertext: b64url(ciphertext), tag: b64url(tag) });
}

function decryptJwe(jwe, cek) {
  const iv = fromB64url(jwe.iv);
  const ciphertext = fromB64url(jwe.ciphertext);
  const tag = fromB64url(jwe.tag);
  return decryptContent(cek, iv, te.encode(jwe.protected), ciphertext, tag);
}

/**
 * Seals `plaintext` (string or bytes) for every public JWK in `recipients`.
 * `{topic, from}` go into the protected header; `kind` is `sealed` or `room-key`.
 */
export async function seal(plaintext, recipients, { topic, from, kind = 'sealed', epoch } = {}) {
  if (!recipients || recipients.length === 0) throw new Error('a sealed envelope needs at least one recipient');
  if (kind === 'room') throw new Error('a room message is made with roomEncrypt');
  const cek = random(64);
  const wrapped = [];
  for (const jwk of recipients) {
    checkPublicJwk(jwk);
    const key = await importPublicJwk(jwk);
    const ek = new Uint8Array(await subtle.encrypt({ name: 'RSA-OAEP' }, key, cek));
    wrapped.push({ header: { alg: ALG, kid: await thumbprint(jwk) }, encrypted_key: b64url(ek) });
  }
  const header = encodeProtected({ enc: ENC, sb: newBinding(kind, topic, from, epoch) });
  return encryptJwe(header, cek, plaintext, wrapped);
}

/**
 * Opens a sealed or room-key envelope with `me = {privateKey, kid}`. A key that does not
 * unwrap becomes a random one and the tag check goes on (RFC 7516 §11.5), so a bad
 * wrapping fails exactly like a bad tag.
 */
export async function openSealed(envelope, me) {
  const jwe = parseJwe(envelope);
  const r = jwe.recipients.find((x) => x && x.header && x.header.kid === me.kid);
  if (!r) {
    throw new OpenError('not_addressed', `not sealed for key ${me.kid} (it is for ${jwe.recipients.length} other recipient(s))`);
  }
  if (r.header.alg !== ALG) throw new OpenError('unsupported', `unsupported algorithm ${JSON.stringify(r.header.alg)}`);
  let cek;
  try {
    const wrapped = fromB64url(r.encrypted_key);
    cek = wrapped && new Uint8Array(await subtle.decrypt({ name: 'RSA-OAEP' }, me.privateKey, wrapped));
  } catch {
    cek = null;
  }
  if (!cek || cek.length !== 64) cek = random(64);
  const plaintext = await decryptJwe(jwe, cek);
  const header = decodeProtected(jwe.protected);
  if (!header) throw new OpenError('inconsistent', 'inconsistent envelope: the authenticated header is not a JSON object with enc and sb');
  if (header.enc !== ENC) throw new OpenError('unsupported', `unsupported algorithm ${JSON.stringify(header.enc)}`);
  if (header.sb.kind === 'room') throw new OpenError('wrong_kind', 'expected a sealed envelope, got a room one');
  return { binding: header.sb, plaintext, kid: me.kid };
}

/** Throws unless an opened envelope was sealed for where (and from whom) it came. */
export function checkDelivery(opened, topic, from) {
  if (opened.binding.topic !== topic) {
    throw new OpenError('wrong_topic', `sealed for topic ${JSON.stringify(opened.binding.topic)} but delivered on ${JSON.stringify(topic)}: moved to another topic`);
  }
  if (from != null && from !== opened.binding.from) {
    throw new OpenError('wrong_sender', `sealed by ${JSON.stringify(opened.binding.from)} but delivered as from ${JSON.stringify(from)}`);
  }
}

// ---- rooms ----

/** Epoch 1 of a new room: `{room, epoch, k, nbf}` (`k`: 64 bytes, base64url). */
export function createRoomKey(room, nowMs = Date.now()) {
  return { room, epoch: 1, k: b64url(random(64)), nbf: nowMs };
}

/**
 * The next epoch: a fresh key nobody who left can derive. Rotate on every removal.
 * `prevOpen` (a rotation that removed nobody, e.g. a scheduled one) keeps the previous
 * epoch open for live messages while this one is current, so a member who sent before
 * the share reached them is not refused as stale.
 */
export function rotateRoomKey(key, nowMs = Date.now(), { prevOpen = false } = {}) {
  const next = { room: key.room, epoch: key.epoch + 1, k: b64url(random(64)), nbf: nowMs, prev: key.epoch };
  if (prevOpen) next.prev_open = true;
  return next;
}

export const roomKid = (key) => `${key.room}#${key.epoch}`;

/** A room message for `topic` under `key` (Flattened JWE, `alg: "dir"`). */
export async function roomEncrypt(key, topic, from, plaintext) {
  const header = encodeProtected({ alg: 'dir', enc: ENC, kid: roomKid(key), sb: newBinding('room', topic, from, key.epoch) });
  return encryptJwe(header, fromB64url(key.k), plaintext, null);
}

/** The room-key envelope giving `key` to every member's public JWK, sent on `topic`. */
export function shareRoomKey(key, members, topic, from) {
  const body = { room: key.room, epoch: key.epoch, k: key.k, nbf: key.nbf };
  if (key.prev !== undefined) body.prev = key.prev;
  if (key.prev_open === true) body.prev_open = true;
  return seal(JSON.stringify(body), members, { topic, from, kind: 'room-key', epoch: key.epoch });
}

/** The room keys a member holds, by room and epoch; old epochs stay to read history. */
export class Keyring {
  constructor() {
    this.rooms = new Map();
  }

  /** A second, different key for an epoch already held is refused. */
  insert(key) {
    const k = key && fromB64url(key.k);
    if (!k || k.length !== 64 || typeof key.room !== 'string' || !Number.isSafeInteger(key.epoch)) {
      throw new OpenError('inconsistent', 'inconsistent envelope: a room-key envelope without a room key');
    }
    const epochs = this.rooms.get(key.room) || new Map();
    const held = epochs.get(key.epoch);
    if (held && held.k !== key.k) {
      throw new OpenError('inconsistent', 'inconsistent envelope: a different key for a room epoch already held');
    }
    epochs.set(key.epoch, key);
    this.rooms.set(key.room, epochs);
  }

  current(room) {
    const epochs = this.rooms.get(room);
    if (!epochs || epochs.size === 0) return undefined;
    return epochs.get(Math.max(...epochs.keys()));
  }

  /** Opens a room message; `reading` is `live` (current epoch only) or `history`. */
  async open(envelope, reading = 'live') {
    const jwe = parseJwe(envelope);
    if (jwe.recipients.length > 0) throw new OpenError('wrong_kind', 'expected a room envelope, got a sealed one');
    const header = decodeProtected(jwe.protected);
    const m = header && typeof header.kid === 'string' && /^(.*)#(\d+)$/.exec(header.kid);
    if (!m) throw undecryptable();
    const [room, epoch] = [m[1], Number(m[2])];
    const key = this.rooms.get(room)?.get(epoch);
    if (!key) throw new OpenError('unknown_room_key', `no room key ${header.kid}: its key share has not been received yet`);
    const plaintext = await decryptJwe(jwe, fromB64url(key.k));
    if (header.alg !== 'dir' || header.enc !== ENC) throw new OpenError('unsupported', `unsupported algorithm ${header.alg}/${header.enc}`);
    if (header.sb.kind !== 'room') throw new OpenError('wrong_kind', `expected a room envelope, got a ${header.sb.kind} one`);
    if (header.sb.epoch !== epoch) throw new OpenError('inconsistent', "inconsistent envelope: the header's epoch is not its key's");
    const held = this.current(room);
    const current = held.epoch;
    if (reading === 'live' && epoch + (held.prev_open === true ? 1 : 0) < current) {
      throw new OpenError('stale_epoch', `room ${room} is at epoch ${current}; a new message under epoch ${epoch} uses a retired key`);
    }
    return { binding: header.sb, plaintext, kid: header.kid };
  }

  /** Keeps the room key an opened room-key envelope carries. */
  takeShare(opened) {
    if (opened.binding.kind !== 'room-key') {
      throw new OpenError('wrong_kind', `expected a room-key envelope, got a ${opened.binding.kind} one`);
    }
    const key = safeJson(utf8(opened.plaintext));
    if (!key || opened.binding.epoch !== key.epoch) {
      throw new OpenError('inconsistent', "inconsistent envelope: the header's epoch is not the shared key's");
    }
    this.insert(key);
    return key;
  }
}

/** The last `capacity` (sender, message id) pairs seen. */
export class ReplayGuard {
  constructor(capacity = 10000) {
    this.capacity = Math.max(1, capacity);
    this.seen = new Set();
    this.order = [];
  }

  admit(binding) {
    const id = JSON.stringify([binding.from, binding.mid]);
    if (this.seen.has(id)) {
      throw new OpenError('replayed', `message ${binding.mid} from ${JSON.stringify(binding.from)} was seen before: a replay`);
    }
    if (this.order.length === this.capacity) this.seen.delete(this.order.shift());
    this.seen.add(id);
    this.order.push(id);
  }
}

/**
 * A member's receiving side: their key (`{privateKey, kid}`), the room keys they were
 * given and the replay window, applied in the one safe order.
 */
export class Inbox {
  constructor(me) {
    this.me = me;
    this.keys = new Keyring();
    this.replay = new ReplayGuard();
  }

  /**
   * Opens the `data` of a message delivered on `topic` (from `from`, when the gateway
   * names the sender). Returns `{kind: 'message', binding, plaintext}` or
   * `{kind: 'room-key', binding, key}`; throws an OpenError otherwise, so a caller can
   * show an undecryptable message as such rather than drop it.
   */
  async open(topic, from, data, reading = 'live') {
    const jwe = parseJwe(data);
    const opened = jwe.recipients.length === 0 ? await this.keys.open(jwe, reading) : await openSealed(jwe, this.me);
    checkDelivery(opened, topic, from);
    if (reading === 'live') this.replay.admit(opened.binding);
    if (opened.binding.kind === 'room-key') {
      return { kind: 'room-key', binding: opened.binding, key: this.keys.takeShare(opened) };
    }
    return { kind: 'message', binding: opened.binding, plaintext: opened.plaintext, kid: opened.kid };
  }
}
