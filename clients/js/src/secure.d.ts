// Types for switchboard-client/e2e (src/secure.js and the WebCrypto module src/e2e.js it
// re-exports), written by hand and checked by `tsc --noEmit -p examples`. docs/e2e.md.

import type { Client, Gap, Json, Message, SubscribeOptions, SubscribeResult, SwitchboardError } from "./index.js";

/** Stable codes of an envelope that did not open (docs/e2e.md, "Receiving"). */
export type OpenErrorCode =
  | "malformed"
  | "unsupported"
  | "not_addressed"
  | "unknown_room_key"
  | "undecryptable"
  | "wrong_kind"
  | "wrong_topic"
  | "wrong_sender"
  | "replayed"
  | "stale_epoch"
  | "inconsistent";

export declare class OpenError extends Error {
  readonly code: OpenErrorCode;
}

/** A registry or room call the daemon refused (`conflict`, `forbidden`, …) or a local misuse. */
export declare class E2EError extends Error {
  readonly code: string;
  readonly status?: number;
}

/** A public JWK as registered: RSA, e = 65537, named by its RFC 7638 thumbprint. */
export interface PublicJwk {
  kty: "RSA";
  n: string;
  e: string;
  alg?: "RSA-OAEP-256";
  use?: "enc";
  kid?: string;
}

export interface KeyPair {
  privateKey: CryptoKey;
  publicKey?: CryptoKey;
  jwk: PublicJwk;
  kid: string;
}

/** Where a key pair is kept: IndexedDB in a browser, memory in Node, or your own. */
export interface KeyStore {
  get(name: string): Promise<KeyPair | undefined>;
  set(name: string, value: KeyPair): Promise<void>;
}

export interface Binding {
  kind: "sealed" | "room" | "room-key";
  topic: string;
  epoch?: number;
  from: string;
  mid: string;
}

/** A message that opened: `data` is the decrypted value, `e2e` says how it was sealed. */
export interface OpenedMessage extends Message {
  e2e: { kind: "sealed" | "room"; from: string; mid: string; epoch?: number; kid: string };
}

/** A message that did not open, as it came (`data` is the envelope or whatever was sent). */
export interface UndecryptableMessage extends Message {
  error: OpenError;
}

export interface RoomKeyEvent {
  room: string;
  epoch: number;
  from: string;
  topic: string;
}

export interface SecureSubscriptionEvents {
  message: OpenedMessage;
  undecryptable: UndecryptableMessage;
  roomKey: RoomKeyEvent;
  gap: Gap;
  error: SwitchboardError;
  end: SwitchboardError | null;
}

export declare class SecureSubscription {
  readonly filter: string;
  readonly state: "pending" | "active" | "ended";
  readonly ready: Promise<SubscribeResult>;
  on<K extends keyof SecureSubscriptionEvents>(type: K, listener: (value: SecureSubscriptionEvents[K]) => void): () => void;
  once<K extends keyof SecureSubscriptionEvents>(type: K, listener: (value: SecureSubscriptionEvents[K]) => void): () => void;
  off<K extends keyof SecureSubscriptionEvents>(type: K, listener: (value: SecureSubscriptionEvents[K]) => void): void;
  unsubscribe(): Promise<void>;
}

export interface E2EOptions {
  /** Defaults to the user the client's token names. */
  user?: string;
  store?: KeyStore;
  /** Use this key pair instead of the store's (e.g. from importPrivateJwk plus its public JWK). */
  keyPair?: KeyPair;
  /** For a generated key: 2048 to 4096 bits, 3072 by default. */
  bits?: number;
  /** Register the public key on create (default true). */
  register?: boolean;
}

export interface E2EEvents {
  /** A rotation by this E2E: `scheduled` when the room's schedule made it. */
  rotated: { room: string; epoch: number; scheduled: boolean };
  /** A scheduled rotation failed (not lost to another admin); it is tried again. */
  rotationFailed: { room: string; error: Error };
}

export declare class E2E {
  static create(client: Client, options?: E2EOptions): Promise<E2E>;
  readonly user: string;
  readonly jwk: PublicJwk;
  readonly kid: string;
  /** The thumbprint as grouped hex, for people to compare out of band. */
  readonly fingerprint: string;
  register(): Promise<Json | undefined>;
  keysOf(user: string): Promise<PublicJwk[]>;
  publishSealed(topic: string, data: Json, options: { to: string[]; event?: string }): Promise<{ seq: number }>;
  createRoom(
    room: string,
    options?: { members?: string[]; keyTopic?: string; rotateEvery?: number | null },
  ): Promise<{ room: string; epoch: number; keyTopic: string }>;
  /** Rotates a room this E2E created every `ms` milliseconds; `null` stops it. */
  setRotation(room: string, ms: number | null): void;
  /** Stops every scheduled rotation. */
  close(): void;
  on<K extends keyof E2EEvents>(type: K, listener: (value: E2EEvents[K]) => void): () => void;
  once<K extends keyof E2EEvents>(type: K, listener: (value: E2EEvents[K]) => void): () => void;
  off<K extends keyof E2EEvents>(type: K, listener: (value: E2EEvents[K]) => void): void;
  addMember(room: string, user: string): Promise<void>;
  removeMember(room: string, user: string): Promise<{ room: string; epoch: number }>;
  rotateRoom(room: string): Promise<{ room: string; epoch: number }>;
  publishToRoom(room: string, data: Json, options?: { topic?: string; event?: string }): Promise<{ seq: number }>;
  epochOf(room: string): number;
  joinRoom(room: string, options?: { keyTopic?: string; last?: number; timeout?: number }): Promise<SecureSubscription>;
  whenRoomKey(room: string, epoch?: number, timeout?: number): Promise<void>;
  subscribe(filter: string, options?: SubscribeOptions): SecureSubscription;
}

export declare function memoryStore(): KeyStore;
export declare function indexedDbStore(database?: string): KeyStore;

// The WebCrypto module (src/e2e.js), for envelopes without a Client.
export interface RoomKey {
  room: string;
  epoch: number;
  k: string;
  nbf: number;
  prev?: number;
  /** Set by a rotation that removed nobody: the previous epoch stays open for live messages. */
  prev_open?: boolean;
}
export interface Jwe {
  protected: string;
  recipients?: { header: { alg: string; kid: string }; encrypted_key: string }[];
  iv: string;
  ciphertext: string;
  tag: string;
}
export interface Opened {
  binding: Binding;
  plaintext: Uint8Array;
  kid: string;
}
export declare const ENC: "A256CBC-HS512";
export declare const ALG: "RSA-OAEP-256";
/** RSA modulus sizes a registry accepts: any bit length from 2048 to 4096. */
export declare const MIN_BITS: number;
export declare const MAX_BITS: number;
export declare function b64url(bytes: Uint8Array): string;
export declare function fromB64url(text: string): Uint8Array | null;
export declare function utf8(bytes: Uint8Array): string;
export declare function thumbprint(jwk: { n: string; e: string }): Promise<string>;
export declare function fingerprint(kid: string): string;
export declare function checkPublicJwk(jwk: PublicJwk): void;
export declare function generateKeyPair(options?: { bits?: number; extractable?: boolean }): Promise<KeyPair & { publicKey: CryptoKey }>;
export declare function publicJwk(publicKey: CryptoKey): Promise<PublicJwk & { kid: string }>;
export declare function importPrivateJwk(jwk: JsonWebKey, options?: { extractable?: boolean }): Promise<{ privateKey: CryptoKey; kid: string }>;
export declare function seal(
  plaintext: string | Uint8Array,
  recipients: PublicJwk[],
  options: { topic: string; from: string; kind?: "sealed" | "room-key"; epoch?: number },
): Promise<Jwe>;
export declare function openSealed(envelope: Jwe | string, me: { privateKey: CryptoKey; kid: string }): Promise<Opened>;
export declare function checkDelivery(opened: Opened, topic: string, from?: string | null): void;
export declare function createRoomKey(room: string, nowMs?: number): RoomKey;
export declare function rotateRoomKey(key: RoomKey, nowMs?: number, options?: { prevOpen?: boolean }): RoomKey;
export declare function roomKid(key: RoomKey): string;
export declare function roomEncrypt(key: RoomKey, topic: string, from: string, plaintext: string | Uint8Array): Promise<Jwe>;
export declare function shareRoomKey(key: RoomKey, members: PublicJwk[], topic: string, from: string): Promise<Jwe>;
export declare function encryptContent(cek: Uint8Array, iv: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): Promise<{ ciphertext: Uint8Array; tag: Uint8Array }>;
export declare function decryptContent(cek: Uint8Array, iv: Uint8Array, aad: Uint8Array, ciphertext: Uint8Array, tag: Uint8Array): Promise<Uint8Array>;
export declare class Keyring {
  insert(key: RoomKey): void;
  current(room: string): RoomKey | undefined;
  open(envelope: Jwe | string, reading?: "live" | "history"): Promise<Opened>;
  takeShare(opened: Opened): RoomKey;
}
export declare class ReplayGuard {
  constructor(capacity?: number);
  admit(binding: Binding): void;
}
export type Received =
  | { kind: "message"; binding: Binding; plaintext: Uint8Array; kid: string }
  | { kind: "room-key"; binding: Binding; key: RoomKey };
export declare class Inbox {
  constructor(me: { privateKey: CryptoKey; kid: string });
  readonly keys: Keyring;
  open(topic: string, from: string | null, data: unknown, reading?: "live" | "history"): Promise<Received>;
}
