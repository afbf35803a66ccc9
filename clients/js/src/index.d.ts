// Types for switchboard-client, written by hand to match src/*.js (checked by
// `tsc --noEmit -p examples`). The wire protocol is docs/protocol.md.
// End-to-end encryption is the separate entry point `switchboard-client/e2e` (src/secure.d.ts).

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A WebSocket constructor: the browser's, Node's `--experimental-websocket` global, or the `ws` package's. */
export interface WebSocketConstructor {
  new (url: string): WebSocketLike;
}

export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface ClientOptions {
  /** A credential: client JWT, API key (`sbk_…`) or admin token. */
  token?: string;
  /** Called before every connection and before the token expires; its token replaces `token`. */
  getToken?: () => string | Promise<string>;
  /** `"auth"` (default): sent in the first frame, kept out of URLs. `"query"`: `?token=`. */
  tokenIn?: "auth" | "query";
  /** The name an anonymous client gives itself (`?user=`). */
  user?: string;
  /** The WebSocket constructor; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect after a drop unless the close code says not to (default true). */
  reconnect?: boolean;
  /** Full-jitter backoff bounds in ms: each delay is drawn in `0..=min(max, min·2^attempt)` (100, 10000). */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** How long a request, or a connection attempt, waits for the server, in ms (10000). */
  timeout?: number;
  /** Refresh the token this many ms before it expires, or halfway through its life if that is sooner (30000). */
  refreshMargin?: number;
}

export type State = "connecting" | "connected" | "disconnected" | "closed";

/** The first frame of every connection. */
export interface Welcome {
  op: "welcome";
  client: string;
  user?: string;
  version: number;
  server: string;
  heartbeat_ms: number;
  expires_at?: number;
  [field: string]: unknown;
}

/** A message published to a topic one of your filters matches. */
export interface Message {
  op: "msg";
  topic: string;
  event?: string;
  data: Json;
  /** When the server accepted it, ms since the Unix epoch. */
  ts: number;
  /** Its number on the topic. */
  seq: number;
  /** The publisher: a client id, `mqtt:<id>`, `bridge:<name>` or `switchboard`. */
  from: string;
  /** The topic's stored value, sent because you just subscribed. */
  retained?: true;
  /** Recovered from the topic's history (`last`, `since`, or a resume after a reconnect). */
  history?: true;
  [field: string]: unknown;
}

export interface DirectMessage {
  op: "dm";
  event?: string;
  data: Json;
  ts: number;
  from: string;
  from_user?: string;
  [field: string]: unknown;
}

export interface Member {
  client: string;
  user?: string;
  info?: { [key: string]: Json };
}

export interface PresenceChange extends Member {
  op: "join" | "leave";
  topic: string;
}

/** The server's answer to a `sub`; `epoch` and `seq` only on topics that keep a history. */
export interface SubscribeResult {
  epoch: string | null;
  seq: number | null;
  /** false: some of the messages asked for could not be delivered (a `gap` event too). */
  recovered: boolean | null;
  history: number;
}

export interface Gap extends SubscribeResult {
  filter: string;
}

export interface SubscribeOptions {
  /** First deliver the topic's last this many messages from its history. */
  last?: number;
  /** First deliver every message after this sequence number … */
  since?: number;
  /** … of this epoch (from an earlier `ready`). */
  epoch?: string;
  /** Messages the async iterator keeps for a slow reader before dropping the oldest (1024). */
  buffer?: number;
  /** Shorthand for `on("message", …)` before anything can arrive. */
  onMessage?: (message: Message) => void;
}

export interface Disconnected {
  /** The close code, or null when the client gave up on a silent connection. */
  code: number | null;
  reason: string;
  /** Whether the client will try again, and after how many ms. */
  reconnect: boolean;
  delay: number | null;
}

export interface ClientEvents {
  state: { previous: State; current: State };
  connecting: { attempt: number };
  connected: Welcome;
  disconnected: Disconnected;
  closed: { code: number | null; reason: string };
  dm: DirectMessage;
  join: PresenceChange;
  leave: PresenceChange;
  lagged: { op: "lagged"; dropped: number };
  gap: Gap;
  unsubscribed: { filters: string[]; message: string | null };
  refreshed: { expiresAt: number | null };
  error: SwitchboardError;
}

export interface SubscriptionEvents {
  message: Message;
  gap: Gap;
  error: SwitchboardError;
  end: SwitchboardError | null;
}

declare class Emitter<Events> {
  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof Events>(type: K, listener: (value: Events[K]) => void): () => void;
  once<K extends keyof Events>(type: K, listener: (value: Events[K]) => void): () => void;
  off<K extends keyof Events>(type: K, listener: (value: Events[K]) => void): void;
}

export interface HttpResponse {
  status: number;
  headers: Record<string, string>;
  /** The JSON value for a JSON response, its text otherwise, undefined when empty. */
  body: Json | undefined;
}

export interface Recording {
  id: number;
  name: string;
  state: string;
  messages: number;
  [field: string]: unknown;
}

export declare class Subscription extends Emitter<SubscriptionEvents> implements AsyncIterable<Message> {
  readonly filter: string;
  state: "pending" | "active" | "ended";
  /** Settles with the server's first answer; rejects with the refusal (`invalid_topic`, `forbidden`, …). */
  readonly ready: Promise<SubscribeResult>;
  /** Messages the async iterator dropped because it was read too slowly. */
  dropped: number;
  /** Stops delivery; `break` in a `for await` loop does the same. */
  unsubscribe(): Promise<void>;
  [Symbol.asyncIterator](): AsyncIterableIterator<Message>;
}

export declare class Client extends Emitter<ClientEvents> {
  constructor(url: string, options?: ClientOptions);
  readonly state: State;
  clientId: string | null;
  user: string | null;
  expiresAt: number | null;
  welcome: Welcome | null;
  connected(): Promise<Welcome>;
  subscribe(filter: string, options?: SubscribeOptions): Subscription;
  publish(topic: string, data?: unknown, options?: { event?: string; retain?: boolean }): Promise<{ seq: number }>;
  send(to: { client: string } | { user: string }, data?: unknown, options?: { event?: string }): Promise<{ delivered: number }>;
  presence(topic: string): Promise<Member[]>;
  setInfo(info: { [key: string]: unknown }): Promise<void>;
  ping(): Promise<number>;
  request(method: string, path: string, body?: unknown, options?: { headers?: Record<string, string> }): Promise<HttpResponse>;
  startRecording(options: { name?: string; topics: string[]; notes?: string }): Promise<Recording>;
  stopRecording(id: number): Promise<Recording>;
  refresh(token?: string): Promise<{ expiresAt: number | null }>;
  call(op: string, fields?: { [key: string]: unknown }): Promise<{ op: string; [field: string]: unknown }>;
  close(): Promise<void>;
}

export declare class SwitchboardError extends Error {
  constructor(code: string, message: string, closeCode?: number | null);
  /** A server error code (docs/protocol.md), one of DISCONNECTED, CLOSED, TIMEOUT, INVALID_ARGUMENT, or `token` (getToken failed; `error` event only). */
  readonly code: string;
  readonly closeCode: number | null;
}

export declare const DISCONNECTED: "disconnected";
export declare const CLOSED: "closed";
export declare const TIMEOUT: "timeout";
export declare const INVALID_ARGUMENT: "invalid_argument";
export declare const VERSION: string;

export declare function backoffDelay(attempt: number, min: number, max: number, random?: () => number): number;
export declare function closeAdvice(code: number | null): "stop" | "now" | "backoff";
export declare function matches(filter: string, topic: string): boolean;
export declare function isWildcard(filter: string): boolean;
