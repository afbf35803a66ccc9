// End-to-end encryption for the SDK, opt-in (docs/e2e.md, docs/sdk-js.md): an `E2E`
// wraps a connected Client with a key pair, the public-key registry, sealed messages,
// rooms and their rotation, and subscriptions that open what they receive. It uses
// only the Client's public calls, so it ships as its own file
// (`switchboard-client/e2e`, `/sdk/switchboard-e2e.mjs`) and the core stays small.

import {
  OpenError,
  generateKeyPair,
  Inbox,
  createRoomKey,
  rotateRoomKey,
  roomEncrypt,
  seal,
  shareRoomKey,
  fingerprint,
} from "./e2e.js";
import { Emitter } from "./emitter.js";

export * from "./e2e.js";

/** Keys kept for this page or process only. */
export function memoryStore() {
  const map = new Map();
  return { get: async (name) => map.get(name), set: async (name, value) => void map.set(name, value) };
}

/**
 * Keys kept in IndexedDB by structured clone: a non-extractable CryptoKey is stored
 * as itself, so its bytes never exist in script.
 */
export function indexedDbStore(database = "switchboard-e2e") {
  let opened = null;
  const db = () =>
    (opened ??= new Promise((resolve, reject) => {
      const request = indexedDB.open(database, 1);
      request.onupgradeneeded = () => request.result.createObjectStore("keys");
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    }));
  const run = async (mode, act) => {
    const tx = (await db()).transaction("keys", mode);
    const request = act(tx.objectStore("keys"));
    return new Promise((resolve, reject) => {
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
  };
  return {
    get: (name) => run("readonly", (s) => s.get(name)),
    set: (name, value) => run("readwrite", (s) => s.put(value, name)).then(() => undefined),
  };
}

const defaultStore = () => (typeof indexedDB !== "undefined" ? indexedDbStore() : memoryStore());

/** A registry or room call the daemon refused; `code` is the daemon's error code. */
export class E2EError extends Error {
  constructor(code, message, status) {
    super(message);
    this.name = "E2EError";
    this.code = code;
    this.status = status;
  }
}

const path = (user) => `/api/v1/e2e/keys/${encodeURIComponent(user)}`;

async function call(client, method, url, body) {
  const r = await client.request(method, url, body);
  if (r.status >= 400) {
    const e = (r.body && typeof r.body === "object" && r.body.error) || {};
    throw new E2EError(e.code ?? "http", `${method} ${url}: ${r.status} ${e.message ?? ""}`.trim(), r.status);
  }
  return r.body;
}

/** How soon a scheduled rotation that failed (not lost to another admin) is tried again, at most. */
const RETRY_MS = 30_000;

export class E2E extends Emitter {
  #client;
  #inbox;
  /** Rooms this E2E administers: room -> { members: Set<user>, keyTopic, rotateEvery, timer }. */
  #rooms = new Map();
  /** One rotation at a time, so a removal never races the schedule to the same epoch. */
  #rotating = Promise.resolve();
  /** Everything received is opened in arrival order, so a key share is held before the message after it. */
  #chain = Promise.resolve();
  #waiters = [];

  /**
   * Loads this user's key pair from `store` (IndexedDB in a browser, memory in Node,
   * or any `{get, set}`), or generates one there, and registers its public key.
   * @param {import("./client.js").Client} client
   */
  static async create(client, { user, store = defaultStore(), keyPair, bits = 3072, register = true } = {}) {
    if (user === undefined) user = (await client.connected()).user ?? client.user;
    if (typeof user !== "string" || user === "") {
      throw new E2EError("invalid_argument", "E2E.create: no user: connect with a token naming one, or pass options.user");
    }
    const name = `keypair:${user}`;
    let me = keyPair ?? (await store.get(name));
    if (!me) {
      me = await generateKeyPair({ bits });
      await store.set(name, { privateKey: me.privateKey, publicKey: me.publicKey, jwk: me.jwk, kid: me.kid });
    }
    if (!me.jwk || !me.privateKey) throw new E2EError("invalid_argument", "E2E.create: keyPair needs privateKey and jwk");
    const e2e = new E2E(client, user, me);
    if (register) await e2e.register();
    return e2e;
  }

  constructor(client, user, me) {
    super();
    this.#client = client;
    this.user = user;
    /** This device's public JWK and its thumbprint, and the fingerprint people compare. */
    this.jwk = me.jwk;
    this.kid = me.kid ?? me.jwk.kid;
    this.fingerprint = fingerprint(this.kid);
    this.#inbox = new Inbox({ privateKey: me.privateKey, kid: this.kid });
  }

  /** Registers this device's public key under the user (201, or 200 if already there). */
  register() {
    return call(this.#client, "POST", path(this.user), this.jwk);
  }

  /** The public JWKs `user` registered (one per device). */
  async keysOf(user) {
    const body = await call(this.#client, "GET", path(user));
    return (body?.keys ?? []).map((k) => k.jwk);
  }

  async #keysOfAll(users) {
    const lists = await Promise.all([...new Set(users)].map((u) => this.keysOf(u)));
    const keys = lists.flat();
    if (keys.length === 0) throw new E2EError("not_found", `no public keys registered for ${[...users].join(", ")}`);
    return keys;
  }

  /** Seals `data` (any JSON value) for every key of the users in `to`, and publishes it on `topic`. */
  async publishSealed(topic, data, { to, event } = {}) {
    const envelope = await seal(JSON.stringify(data), await this.#keysOfAll(to ?? []), { topic, from: this.user });
    return this.#client.publish(topic, envelope, { event });
  }

  /**
   * Creates `room` at epoch 1 (the daemon orders epochs) and shares its key to every
   * member's keys, and this user's, on `keyTopic` (give it a history so late joiners
   * find it). This E2E is the room's admin: it adds and removes members, and with
   * `rotateEvery` (ms) rotates the room on that schedule (see `setRotation`).
   */
  async createRoom(room, { members = [], keyTopic = `${room}/keys`, rotateEvery = null } = {}) {
    const state = { members: new Set([this.user, ...members]), keyTopic, rotateEvery: null, timer: null };
    const key = createRoomKey(room);
    const keys = await this.#keysOfAll(state.members);
    await call(this.#client, "POST", "/api/v1/e2e/rooms", { room, epoch: key.epoch });
    this.#rooms.set(room, state);
    this.#inbox.keys.insert(key);
    await this.#share(key, state, keys);
    if (rotateEvery) this.setRotation(room, rotateEvery);
    return { room, epoch: key.epoch, keyTopic };
  }

  async #share(key, state, keys) {
    const envelope = await shareRoomKey(key, keys, state.keyTopic, this.user);
    await this.#client.publish(state.keyTopic, envelope, { event: "room-key" });
  }

  /**
   * Rotates a room this E2E administers every `ms` milliseconds (`null` stops it): a
   * new epoch with a fresh key, shared to the current members, so whoever obtains one
   * epoch's key reads at most one interval. Old epochs stay for history, and the
   * previous epoch stays open for live messages still in flight (nobody was removed).
   * A manual rotation, or a share of a new epoch from another admin, restarts the
   * interval. Several admins (this user's other devices) may run the same schedule:
   * the daemon takes one rotation per epoch; the others are refused (`conflict`), skip
   * their turn and wait for the share. Emits `rotated` `{room, epoch, scheduled}` and,
   * when a scheduled rotation fails otherwise, `rotationFailed` `{room, error}` (tried
   * again after 30 s, or the interval if shorter). `close()` stops every schedule.
   */
  setRotation(room, ms) {
    const state = this.#admin(room);
    if (ms !== null && !(Number.isFinite(ms) && ms > 0)) {
      throw new E2EError("invalid_argument", "setRotation(room, ms): ms must be a positive number of milliseconds, or null");
    }
    state.rotateEvery = ms;
    this.#schedule(room, ms);
  }

  /** Stops every scheduled rotation (the Client stays open). */
  close() {
    for (const state of this.#rooms.values()) {
      clearTimeout(state.timer);
      state.rotateEvery = null;
    }
  }

  /** (Re)arms the room's schedule to fire `delay` ms from now. */
  #schedule(room, delay) {
    const state = this.#rooms.get(room);
    if (!state) return;
    clearTimeout(state.timer);
    state.timer = null;
    if (!state.rotateEvery) return;
    state.timer = setTimeout(() => this.#scheduled(room), delay ?? state.rotateEvery);
    // A schedule alone does not keep a Node process alive.
    state.timer.unref?.();
  }

  async #scheduled(room) {
    try {
      await this.#rotate(room, { prevOpen: true, scheduled: true });
    } catch (error) {
      if (error?.code === "conflict") return this.#schedule(room);
      this.emit("rotationFailed", { room, error });
      this.#schedule(room, Math.min(this.#rooms.get(room)?.rotateEvery ?? RETRY_MS, RETRY_MS));
    }
  }

  #admin(room) {
    const state = this.#rooms.get(room);
    if (!state) throw new E2EError("invalid_argument", `not the admin of room ${room}: create it with createRoom`);
    return state;
  }

  /** Gives a new member the room's current key (not older epochs: they cannot read earlier history). */
  async addMember(room, user) {
    const state = this.#admin(room);
    const keys = await this.#keysOfAll([user]);
    state.members.add(user);
    await this.#share(this.#inbox.keys.current(room), state, keys);
  }

  /** Removes a member and rotates, so they cannot read anything sent after. */
  async removeMember(room, user) {
    this.#admin(room).members.delete(user);
    return this.rotateRoom(room);
  }

  /**
   * Moves the room to its next epoch with a fresh key shared to the members left.
   * When another member rotated first, the daemon refuses (`conflict`): wait for that share.
   */
  async rotateRoom(room) {
    return this.#rotate(room, { prevOpen: false, scheduled: false });
  }

  #rotate(room, { prevOpen, scheduled }) {
    const state = this.#admin(room);
    const run = this.#rotating.then(async () => {
      // Keys first: a room moved to an epoch whose key is never shared would be stuck.
      const keys = await this.#keysOfAll(state.members);
      const key = rotateRoomKey(this.#inbox.keys.current(room), Date.now(), { prevOpen });
      try {
        await call(this.#client, "POST", "/api/v1/e2e/rooms", { room, epoch: key.epoch });
      } catch (error) {
        // Another admin began this epoch: the interval counts from there.
        if (error?.code === "conflict") this.#schedule(room);
        throw error;
      }
      this.#inbox.keys.insert(key);
      await this.#share(key, state, keys);
      this.#schedule(room);
      this.emit("rotated", { room, epoch: key.epoch, scheduled });
      return { room, epoch: key.epoch };
    });
    this.#rotating = run.catch(() => {});
    return run;
  }

  /** Encrypts `data` (any JSON value) with the room's current key and publishes it on `topic` (the room's name by default). */
  async publishToRoom(room, data, { topic = room, event } = {}) {
    const key = this.#inbox.keys.current(room);
    if (!key) throw new OpenError("unknown_room_key", `no key for room ${room} yet: join it first`);
    return this.#client.publish(topic, await roomEncrypt(key, topic, this.user, JSON.stringify(data)), { event });
  }

  /** The epoch of the room's key this member holds, or 0. */
  epochOf(room) {
    return this.#inbox.keys.current(room)?.epoch ?? 0;
  }

  /**
   * Reads the room's key topic (its history too) and resolves once the key of the
   * room's current epoch, as the daemon names it, has arrived.
   */
  async joinRoom(room, { keyTopic = `${room}/keys`, last = 100, timeout = 10_000 } = {}) {
    const sub = this.subscribe(keyTopic, { last });
    await sub.ready;
    const body = await call(this.#client, "GET", `/api/v1/e2e/rooms?room=${encodeURIComponent(room)}`).catch(() => null);
    await this.whenRoomKey(room, body?.epoch ?? 1, timeout);
    return sub;
  }

  /** Resolves once this member holds `room`'s key for `epoch` or later. */
  whenRoomKey(room, epoch = 1, timeout = 10_000) {
    if (this.epochOf(room) >= epoch) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = { room, epoch, resolve };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new E2EError("timeout", `no key share for room ${room} epoch ${epoch} within ${timeout} ms`));
      }, timeout);
      waiter.resolve = () => (clearTimeout(timer), resolve());
      this.#waiters.push(waiter);
    });
  }

  /**
   * Subscribes and opens every message: `message` carries the decrypted `data` and an
   * `e2e` description; one that does not open is an `undecryptable` event with its
   * `error` (an OpenError: `code` says why), never dropped. Room-key shares are kept
   * and reported as `roomKey`.
   */
  subscribe(filter, options = {}) {
    return new SecureSubscription(this.#client.subscribe(filter, options), (msg) => this.#open(msg));
  }

  #open(msg) {
    const result = this.#chain.then(async () => {
      try {
        const got = await this.#inbox.open(msg.topic, null, msg.data, msg.history ? "history" : "live");
        if (got.kind === "room-key") {
          const { room, epoch } = got.key;
          // A new epoch of a room this one schedules (another admin's, or our own share
          // coming back): count the interval from now.
          if (!msg.history && this.#rooms.get(room)?.rotateEvery) this.#schedule(room);
          this.#waiters = this.#waiters.filter((w) => !(w.room === room && epoch >= w.epoch && (w.resolve(), true)));
          return { kind: "roomKey", value: { room, epoch, from: got.binding.from, topic: msg.topic } };
        }
        const { kind, from, mid, epoch } = got.binding;
        const text = new TextDecoder().decode(got.plaintext);
        let data;
        try {
          data = JSON.parse(text);
        } catch {
          data = text;
        }
        return { kind: "message", value: { ...msg, data, e2e: { kind, from, mid, epoch, kid: got.kid } } };
      } catch (error) {
        const e = error instanceof OpenError ? error : new OpenError("undecryptable", String(error?.message ?? error));
        return { kind: "undecryptable", value: { ...msg, error: e } };
      }
    });
    this.#chain = result;
    return result;
  }
}

/** A Subscription whose messages are opened; see `E2E.subscribe`. */
export class SecureSubscription extends Emitter {
  #inner;
  #order = Promise.resolve();

  constructor(inner, open) {
    super();
    this.#inner = inner;
    this.filter = inner.filter;
    this.ready = inner.ready;
    inner.on("message", (msg) => {
      // Opened now (in the E2E's one queue), reported in order.
      const opened = open(msg);
      this.#order = this.#order.then(() => opened).then(({ kind, value }) => this.emit(kind, value));
    });
    for (const type of ["gap", "error", "end"]) inner.on(type, (v) => this.emit(type, v));
  }

  get state() {
    return this.#inner.state;
  }

  unsubscribe() {
    return this.#inner.unsubscribe();
  }
}
