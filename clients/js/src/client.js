// The client: one WebSocket to the daemon at a time, every request a promise
// matched to its reply by id, pushes routed to local subscriptions, and the
// reconnect loop that keeps all of that alive (docs/protocol.md, "Writing a client";
// the Rust client in clients/rust/ follows the same rules).

import { backoffDelay, closeAdvice } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { CLOSED, DISCONNECTED, INVALID_ARGUMENT, SwitchboardError, TIMEOUT } from "./errors.js";
import { Positions } from "./resume.js";
import { Subscription } from "./subscription.js";
import { isWildcard, matches } from "./topic.js";

const DEFAULTS = {
  reconnect: true,
  minReconnectDelay: 100,
  maxReconnectDelay: 10_000,
  timeout: 10_000,
  refreshMargin: 30_000,
  tokenIn: "auth",
};

const invalid = (message) => new SwitchboardError(INVALID_ARGUMENT, message);
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
/** The reply without its envelope. */
const body = ({ op, id, ...rest }) => rest;

export class Client extends Emitter {
  #url;
  #options;
  #WebSocket;
  #state = "disconnected";
  /** The connection being opened or served: { ws, welcomed, authId, authed, heard, silent, timer, beat, refusal }. */
  #conn = null;
  #attempt = 0;
  #retryTimer = null;
  #refreshTimer = null;
  #nextId = 0;
  /** id -> { resolve, reject, text, sent, keep, timer }; `keep` marks a `sub` the reconnect re-sends. */
  #pending = new Map();
  /** Ids of requests made while not connected, sent in order once `welcome` arrives. */
  #waiting = [];
  /** filter -> { filter, subs, options, confirmed, result, sentOn } */
  #filters = new Map();
  #wildcards = new Set();
  #positions = new Positions();
  #info = null;
  #closedError = null;

  /**
   * @param {string} url `ws://host:8700/ws` or `wss://…`
   * @param {object} [options] see index.d.ts (`ClientOptions`)
   */
  constructor(url, options = {}) {
    super();
    if (typeof url !== "string") throw invalid("the URL must be a string such as ws://127.0.0.1:8700/ws");
    const WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocket !== "function") {
      throw invalid(
        "no WebSocket here: pass options.WebSocket (on Node 20, the `ws` package's WebSocket, " +
          "or run node with --experimental-websocket)",
      );
    }
    this.#url = url;
    this.#options = { ...DEFAULTS, ...options };
    this.#WebSocket = WebSocket;
    /** This connection's id from `welcome`; a reconnection gets a new one. */
    this.clientId = null;
    /** The connection's user, when it has one. */
    this.user = null;
    /** Unix seconds at which the credential expires, when it does. */
    this.expiresAt = null;
    /** The last `welcome` frame. */
    this.welcome = null;
    // Next tick, so listeners added right after `new` hear the first `connecting`.
    queueMicrotask(() => this.#connect());
  }

  /** `"connecting"`, `"connected"`, `"disconnected"` (waiting to reconnect) or `"closed"`. */
  get state() {
    return this.#state;
  }

  /** Resolves with the `welcome` once connected (at once if connected now); rejects once closed. */
  connected() {
    if (this.#state === "connected") return Promise.resolve(this.welcome);
    if (this.#state === "closed") return Promise.reject(this.#closedError);
    return new Promise((resolve, reject) => {
      const offs = [
        this.once("connected", (welcome) => (offs.forEach((off) => off()), resolve(welcome))),
        this.once("closed", () => (offs.forEach((off) => off()), reject(this.#closedError))),
      ];
    });
  }

  /**
   * Subscribes to a filter; the returned subscription delivers at once, and its
   * `ready` settles with the server's answer.
   */
  subscribe(filter, options = {}) {
    if (typeof filter !== "string") throw invalid("subscribe(filter): the filter must be a string");
    if (this.#state === "closed") throw this.#closedError;
    const sub = new Subscription(filter, options, (s) => this.#release(s));
    const known = this.#filters.get(filter);
    if (known) {
      known.subs.add(sub);
      if (known.result) sub._confirmed(known.result);
      return sub;
    }
    const entry = {
      filter,
      subs: new Set([sub]),
      options: { last: options.last, since: options.since, epoch: options.epoch },
      confirmed: false,
      result: null,
      sentOn: null,
    };
    this.#filters.set(filter, entry);
    if (isWildcard(filter)) this.#wildcards.add(entry);
    if (this.#conn?.welcomed) this.#sendSub(this.#conn, entry);
    return sub;
  }

  /** Publishes; resolves with `{ seq }`, the message's number on its topic. */
  publish(topic, data, options = {}) {
    if (typeof topic !== "string") return Promise.reject(invalid("publish(topic): the topic must be a string"));
    const frame = { op: "pub", topic, data };
    if (options.event !== undefined) frame.event = options.event;
    if (options.retain) frame.retain = true;
    return this.#request(frame).then(body);
  }

  /** A direct message to `{ client }` or `{ user }`; resolves with `{ delivered }`. */
  send(to, data, options = {}) {
    const client = to?.client;
    const user = to?.user;
    if ((typeof client === "string") === (typeof user === "string")) {
      return Promise.reject(invalid("send(to): give exactly one of { client } or { user }, as a string"));
    }
    const frame = client !== undefined ? { op: "send", client, data } : { op: "send", user, data };
    if (options.event !== undefined) frame.event = options.event;
    return this.#request(frame).then(body);
  }

  /** The members of a presence-enabled topic. */
  presence(topic) {
    if (typeof topic !== "string") return Promise.reject(invalid("presence(topic): the topic must be a string"));
    return this.#request({ op: "presence", topic }).then((reply) => reply.members ?? []);
  }

  /** Sets the display info others see in presence; sent again after every reconnect. */
  setInfo(info) {
    if (!isObject(info)) return Promise.reject(invalid("setInfo(info): info must be an object"));
    const before = this.#info;
    this.#info = info;
    return this.#request({ op: "info", info }).then(
      () => undefined,
      (error) => {
        if (this.#info === info) this.#info = before;
        throw error;
      },
    );
  }

  /** An application-level round trip; resolves with its time in milliseconds. */
  ping() {
    const start = Date.now();
    return this.#request({ op: "ping" }).then(() => Date.now() - start);
  }

  /**
   * An HTTP request to the daemon's API carried over this WebSocket, as this
   * connection's identity; resolves with `{ status, headers, body }` (HTTP errors too).
   */
  request(method, path, body = undefined, options = {}) {
    if (typeof method !== "string" || typeof path !== "string") {
      return Promise.reject(invalid("request(method, path): both must be strings"));
    }
    const frame = { op: "http", method, path };
    if (body !== undefined) frame.body = body;
    if (options.headers !== undefined) frame.headers = options.headers;
    return this.#request(frame).then((reply) => ({
      status: reply.status,
      headers: reply.headers ?? {},
      body: reply.body,
    }));
  }

  /** Starts a recording of `topics`; resolves with the recording as the HTTP API shows it. */
  startRecording({ name, topics, notes } = {}) {
    if (!Array.isArray(topics)) return Promise.reject(invalid("startRecording: topics must be an array of filters"));
    const frame = { op: "record", action: "start", name, topics };
    if (notes !== undefined) frame.notes = notes;
    return this.#request(frame).then((reply) => reply.recording);
  }

  /** Stops a recording once every message it took is stored; resolves with the recording. */
  stopRecording(id) {
    return this.#request({ op: "record", action: "stop", recording: id }).then((reply) => reply.recording);
  }

  /**
   * Replaces the connection's token now (with `token`, or one from `getToken`).
   * Subscriptions the new token no longer allows end with a `forbidden` error.
   */
  async refresh(token = undefined) {
    if (token === undefined) {
      if (!this.#options.getToken) throw invalid("refresh(): pass a token or set options.getToken");
      token = await this.#options.getToken();
    }
    if (typeof token !== "string") throw invalid("refresh(token): the token must be a string");
    const reply = await this.#request({ op: "refresh", token });
    if (typeof reply.expires_at === "number") this.expiresAt = reply.expires_at;
    if (Array.isArray(reply.unsubscribed) && reply.unsubscribed.length > 0) {
      this.#revoked(reply.unsubscribed, "the new token does not allow this subscription");
    }
    this.#scheduleRefresh();
    this.emit("refreshed", { expiresAt: this.expiresAt });
    return { expiresAt: this.expiresAt };
  }

  /** Any request by op name (for ops this version does not wrap); resolves with the reply. */
  call(op, fields = {}) {
    if (typeof op !== "string") return Promise.reject(invalid("call(op): op must be a string"));
    return this.#request({ ...fields, op });
  }

  /**
   * Closes for good: rejects what is pending, ends every subscription and stops every
   * timer. Resolves once the socket is closed.
   */
  close() {
    const conn = this.#conn;
    this.#conn = null;
    if (conn) this.#stopTimers(conn);
    this.#finish(1000, "closed by the client", true);
    if (!conn) return Promise.resolve();
    const { ws } = conn;
    return new Promise((resolve) => {
      ws.onmessage = null;
      ws.onopen = null;
      ws.onclose = () => resolve();
      try {
        ws.close(1000);
      } catch {
        resolve();
      }
      if (ws.readyState === 3) resolve();
    });
  }

  // ---- the connection ----

  async #connect() {
    this.#retryTimer = null;
    if (this.#state === "closed") return;
    this.#setState("connecting");
    this.emit("connecting", { attempt: this.#attempt });
    const options = this.#options;
    let token = options.token ?? null;
    if (options.getToken) {
      try {
        token = (await options.getToken()) ?? null;
      } catch (error) {
        if (this.#state === "closed") return;
        this.emit("error", new SwitchboardError("token", `getToken failed: ${error?.message ?? error}`));
        return this.#retry(null, "getToken failed");
      }
      if (this.#state === "closed") return;
    }
    let url = this.#url;
    const query = [];
    if (options.user !== undefined) query.push(`user=${encodeURIComponent(options.user)}`);
    const inQuery = token !== null && options.tokenIn === "query";
    if (inQuery) query.push(`token=${encodeURIComponent(token)}`);
    if (query.length > 0) url += (url.includes("?") ? "&" : "?") + query.join("&");
    let ws;
    try {
      ws = new this.#WebSocket(url);
    } catch (error) {
      // A malformed URL: no retry can fix it.
      return this.#finish(null, `cannot open ${this.#url}: ${error?.message ?? error}`, false);
    }
    const conn = {
      ws,
      welcomed: false,
      authId: null,
      authed: token === null || inQuery,
      heard: true,
      silent: 0,
      timer: null,
      beat: null,
      refusal: null,
    };
    this.#conn = conn;
    conn.timer = setTimeout(() => this.#abandon(conn, `no welcome within ${options.timeout} ms`), options.timeout);
    ws.onopen = () => {
      if (conn !== this.#conn || conn.authed) return;
      // Kept out of the URL (and so out of proxies' logs): the first frame.
      conn.authId = ++this.#nextId;
      this.#write(conn, JSON.stringify({ op: "auth", id: conn.authId, token }));
    };
    ws.onmessage = (event) => this.#onFrame(conn, event.data);
    ws.onclose = (event) => this.#onClose(conn, event.code, event.reason);
    // The close event follows and says what happened; `ws` throws on an unheard error.
    ws.onerror = () => {};
  }

  #onFrame(conn, data) {
    if (conn !== this.#conn || typeof data !== "string") return;
    conn.heard = true;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!isObject(frame)) return;
    switch (frame.op) {
      case "msg":
        return this.#onMessage(frame);
      case "ok":
      case "error":
      case "http":
        return this.#onReply(conn, frame);
      case "welcome":
        return this.#onWelcome(conn, frame);
      case "dm":
      case "join":
      case "leave":
      case "lagged":
        this.emit(frame.op, frame);
        return;
      case "unsubscribed":
        if (Array.isArray(frame.unsubscribed)) this.#revoked(frame.unsubscribed, frame.message);
        return;
      // Unknown pushes are ignored (forward compatibility).
    }
  }

  #onWelcome(conn, welcome) {
    // An anonymous `welcome` can come before the answer to our `auth`: the real one follows it.
    if (!conn.authed || conn.welcomed) return;
    conn.welcomed = true;
    clearTimeout(conn.timer);
    conn.timer = null;
    this.#attempt = 0;
    this.welcome = welcome;
    this.clientId = welcome.client ?? null;
    this.user = welcome.user ?? null;
    if (typeof welcome.expires_at === "number") this.expiresAt = welcome.expires_at;
    this.#scheduleRefresh();
    // Browsers hide the server's pings; silence for 2–3 intervals means a dead path.
    const beat = welcome.heartbeat_ms;
    if (typeof beat === "number" && beat > 0) conn.beat = setInterval(() => this.#tick(conn), beat);
    for (const entry of this.#filters.values()) this.#sendSub(conn, entry);
    if (this.#info !== null) this.#write(conn, JSON.stringify({ op: "info", info: this.#info }));
    for (const id of this.#waiting.splice(0)) {
      const pending = this.#pending.get(id);
      if (pending && !pending.sent) this.#dispatch(conn, pending);
    }
    this.#setState("connected");
    this.emit("connected", welcome);
  }

  #tick(conn) {
    if (conn.heard) {
      conn.heard = false;
      conn.silent = 0;
      return;
    }
    conn.silent += 1;
    if (conn.silent >= 3) return this.#abandon(conn, "nothing heard from the server for 3 heartbeat intervals");
    this.#write(conn, '{"op":"ping"}');
  }

  #onReply(conn, frame) {
    const id = frame.id;
    if (id !== undefined && id === conn.authId) {
      if (frame.op === "ok") {
        conn.authed = true;
        if (typeof frame.expires_at === "number") this.expiresAt = frame.expires_at;
      } else {
        // Where anonymous clients are allowed the server keeps the connection, as
        // anonymous; we were given an identity to use, so this is a refusal (4001).
        conn.refusal = frame;
        this.#abandon(conn, frame.code ?? "unauthorized", 4001);
      }
      return;
    }
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    if (frame.op === "error") {
      pending.reject(new SwitchboardError(frame.code ?? "internal", frame.message ?? "the server refused the request"));
    } else {
      pending.resolve(frame);
    }
  }

  #onMessage(msg) {
    if (!this.#positions.admit(msg)) return;
    const entry = this.#filters.get(msg.topic);
    if (entry !== undefined) for (const sub of entry.subs) sub._deliver(msg);
    if (this.#wildcards.size === 0) return;
    for (const wild of this.#wildcards) {
      if (matches(wild.filter, msg.topic)) for (const sub of wild.subs) sub._deliver(msg);
    }
  }

  #onClose(conn, code, reason) {
    if (conn !== this.#conn) return;
    this.#conn = null;
    this.#stopTimers(conn);
    code = typeof code === "number" ? code : null;
    reason = conn.refusal?.message ? `${reason || conn.refusal.code}: ${conn.refusal.message}` : reason || "";
    for (const [id, pending] of this.#pending) {
      if (!pending.sent) continue;
      this.#pending.delete(id);
      clearTimeout(pending.timer);
      // A `sub` is sent again on the next connection; anything else may or may not have been applied.
      if (!pending.keep) {
        pending.reject(new SwitchboardError(DISCONNECTED, `the connection dropped before the reply came (close code ${code})`, code));
      }
    }
    if (this.#state === "closed") return;
    let advice = closeAdvice(code);
    // An expired token is no reason to stop when we can fetch a new one.
    if (code === 4003 && this.#options.getToken) advice = "backoff";
    const reconnect = this.#options.reconnect && advice !== "stop";
    if (!reconnect) {
      this.emit("disconnected", { code, reason, reconnect: false, delay: null });
      return this.#finish(code, reason, false);
    }
    this.#retry(code, reason, advice === "now");
  }

  #retry(code, reason, now = false) {
    const { minReconnectDelay, maxReconnectDelay } = this.#options;
    const delay = now ? 0 : backoffDelay(this.#attempt, minReconnectDelay, maxReconnectDelay);
    this.#attempt += 1;
    this.#setState("disconnected");
    this.emit("disconnected", { code, reason, reconnect: true, delay });
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }

  /**
   * Gives up on a connection (silent, no `welcome`, token refused) without waiting for
   * TCP, as if the server had closed it with `code`.
   */
  #abandon(conn, reason, code = null) {
    if (conn !== this.#conn) return;
    const { ws } = conn;
    ws.onclose = null;
    ws.onmessage = null;
    ws.onopen = null;
    try {
      if (typeof ws.terminate === "function") ws.terminate();
      else ws.close();
    } catch {
      // Closing a socket that is already gone.
    }
    this.#onClose(conn, code, reason);
  }

  #stopTimers(conn) {
    clearTimeout(conn.timer);
    clearInterval(conn.beat);
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
  }

  /** Stops for good. `asked` is true for `close()`: subscriptions then end without an error. */
  #finish(code, reason, asked) {
    if (this.#state === "closed") return;
    this.#closedError = new SwitchboardError(CLOSED, `the client is closed: ${reason || "no reason given"}`, code);
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    this.#setState("closed");
    for (const pending of this.#pending.values()) {
      clearTimeout(pending.timer);
      if (!pending.keep) pending.reject(this.#closedError);
    }
    this.#pending.clear();
    this.#waiting.length = 0;
    for (const entry of this.#filters.values()) {
      for (const sub of entry.subs) sub._end(asked ? null : this.#closedError);
    }
    this.#filters.clear();
    this.#wildcards.clear();
    this.emit("closed", { code, reason });
  }

  #setState(next) {
    const previous = this.#state;
    if (previous === next) return;
    this.#state = next;
    this.emit("state", { previous, current: next });
  }

  // ---- requests ----

  #request(frame) {
    if (this.#state === "closed") return Promise.reject(this.#closedError);
    const id = ++this.#nextId;
    frame.id = id;
    let text;
    try {
      text = JSON.stringify(frame);
    } catch (error) {
      return Promise.reject(invalid(`the request is not JSON: ${error?.message ?? error}`));
    }
    return new Promise((resolve, reject) => {
      const pending = { resolve, reject, text, sent: false, keep: false, timer: null };
      const ms = this.#options.timeout;
      pending.timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new SwitchboardError(TIMEOUT, `no reply to \`${frame.op}\` within ${ms} ms`));
      }, ms);
      this.#pending.set(id, pending);
      if (this.#conn?.welcomed) this.#dispatch(this.#conn, pending);
      else this.#waiting.push(id);
    });
  }

  #dispatch(conn, pending) {
    pending.sent = true;
    this.#write(conn, pending.text);
  }

  #write(conn, text) {
    try {
      conn.ws.send(text);
    } catch {
      // The socket is closing; its close event settles what is pending.
    }
  }

  /** Sends `sub` for a filter: with the resume position after a reconnect, else with the caller's options. */
  #sendSub(conn, entry) {
    const frame = { op: "sub", id: ++this.#nextId, topic: entry.filter };
    const resume = this.#positions.since(entry.filter);
    let asked = false;
    if (resume !== null) {
      frame.since = resume.since;
      frame.epoch = resume.epoch;
      asked = true;
    } else if (!entry.confirmed) {
      const { last, since, epoch } = entry.options;
      if (last !== undefined) frame.last = last;
      if (since !== undefined) frame.since = since;
      if (epoch !== undefined) frame.epoch = epoch;
      asked = last !== undefined || since !== undefined;
    }
    let text;
    try {
      text = JSON.stringify(frame);
    } catch (error) {
      return this.#refused(entry, invalid(`subscribe options are not JSON: ${error?.message ?? error}`));
    }
    this.#pending.set(frame.id, {
      resolve: (reply) => this.#subscribed(entry, reply, asked),
      reject: (error) => this.#refused(entry, error),
      text,
      sent: false,
      keep: true,
      timer: null,
    });
    entry.sentOn = conn;
    this.#dispatch(conn, this.#pending.get(frame.id));
  }

  #subscribed(entry, reply, asked) {
    if (this.#filters.get(entry.filter) !== entry) return;
    const gap = this.#positions.subscribed(entry.filter, reply, asked);
    entry.confirmed = true;
    const result = {
      epoch: reply.epoch ?? null,
      seq: reply.seq ?? null,
      recovered: reply.recovered ?? null,
      history: reply.history ?? 0,
    };
    entry.result = result;
    for (const sub of entry.subs) sub._confirmed(result);
    if (!gap) return;
    const info = { filter: entry.filter, ...result };
    for (const sub of entry.subs) sub._gap(info);
    this.emit("gap", info);
  }

  #refused(entry, error) {
    if (this.#filters.get(entry.filter) !== entry) return;
    this.#drop(entry);
    for (const sub of entry.subs) sub._end(error);
  }

  #drop(entry) {
    this.#filters.delete(entry.filter);
    this.#wildcards.delete(entry);
    this.#positions.forget(entry.filter);
  }

  /** The server dropped these filters (a refresh or a reload narrowed the permissions). */
  #revoked(filters, message) {
    const error = new SwitchboardError("forbidden", message ?? "the server dropped this subscription");
    for (const filter of filters) {
      const entry = this.#filters.get(filter);
      if (entry) this.#refused(entry, error);
    }
    this.emit("unsubscribed", { filters, message: message ?? null });
  }

  #release(sub) {
    const entry = this.#filters.get(sub.filter);
    if (!entry || !entry.subs.delete(sub) || entry.subs.size > 0) return Promise.resolve();
    this.#drop(entry);
    const conn = this.#conn;
    // The server keeps nothing for a closed connection: only a live one needs telling.
    if (!conn?.welcomed || entry.sentOn !== conn) return Promise.resolve();
    return this.#request({ op: "unsub", topic: sub.filter }).then(
      () => undefined,
      (error) => {
        if (error.code === DISCONNECTED || error.code === CLOSED || error.code === "not_subscribed") return;
        throw error;
      },
    );
  }

  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    if (!this.#options.getToken || typeof this.expiresAt !== "number" || !this.#conn) return;
    const left = this.expiresAt * 1000 - Date.now();
    const delay = Math.max(0, left - Math.min(this.#options.refreshMargin, left / 2));
    this.#refreshTimer = setTimeout(() => {
      this.#refreshTimer = null;
      this.refresh().catch((error) => {
        this.emit("error", error);
        // Try again while the old token still holds.
        const still = this.expiresAt * 1000 - Date.now();
        if (this.#state === "connected" && still > 1000 && this.#refreshTimer === null) {
          this.#refreshTimer = setTimeout(() => this.#scheduleRefresh(), Math.min(5000, still / 4));
        }
      });
    }, delay);
  }
}
