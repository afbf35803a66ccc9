// Chat: a room is the presence topic room/<name> ([presence] topics = ["room/+"]):
// subscribing makes you a member, everyone subscribed hears public messages published
// to it, and a private message is a direct message (`send`) to one member's client id.
//
// An end-to-end encrypted room (docs/e2e.md) needs a signed-in user (`#token=…`), whose
// key pair the page keeps in IndexedDB and registers. The first to open the room
// creates its key and is its admin: it shares the key to each signed-in member who
// joins with a registered key, and rotates it when one leaves. Messages are room
// envelopes the daemon stores and forwards without being able to read them; a page
// without the key shows them as encrypted.

import { connect, h } from "./connect.js";

const $ = (id) => document.getElementById(id);
const members = new Map();
let sb;
let topic;
let e2e = null;
/** Whether this page created the encrypted room, and so shares and rotates its key. */
let admin = false;
/** The users the admin gave the key to. */
const holders = new Set();

$("join").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("name").value.trim();
  const encrypted = $("encrypted").checked;
  topic = `room/${$("room").value.trim()}`;
  const signedIn = new URLSearchParams(location.hash.slice(1)).has("token");
  // A credential names the user; only an anonymous client names itself.
  sb = connect(signedIn ? {} : { user: name });
  sb.on("dm", (m) => {
    if (m.event === "chat") line(`${m.from_user ?? m.from} → you: ${m.data?.text}`, "private");
  });
  sb.on("join", (m) => {
    if (m.topic !== topic) return;
    members.set(m.client, m.user ?? m.client);
    renderMembers();
    if (m.client !== sb.clientId) share(m.user);
  });
  sb.on("leave", (m) => {
    if (m.topic !== topic) return;
    members.delete(m.client);
    renderMembers();
    unshare(m.user);
  });
  try {
    if (encrypted) {
      if (!signedIn) throw new Error("an encrypted room needs a signed-in user: open this page with #token=<JWT> in its address");
      await openEncrypted();
    } else {
      const sub = sb.subscribe(topic);
      sub.on("message", (m) => (isEnvelope(m.data) ? locked() : line(`${m.data?.name}: ${m.data?.text}`)));
      await sub.ready;
    }
    for (const m of await sb.presence(topic)) members.set(m.client, m.user ?? m.client);
  } catch (error) {
    $("error").textContent = error.message;
  }
  $("join").hidden = true;
  $("room-view").hidden = false;
  $("title").textContent = `${topic.slice(5)} — you are ${sb.user ?? name}`;
  renderMembers();
});

/**
 * Joins the encrypted room: the key pair, the key topic (subscribed before the room, so
 * the admin's share, sent when we appear in the room, is not missed), then the room.
 */
async function openEncrypted() {
  if (!globalThis.crypto?.subtle) throw new Error("encryption needs WebCrypto: open the page over https or on localhost");
  const { E2E } = await import("/sdk/switchboard-e2e.mjs");
  await sb.connected();
  e2e = await E2E.create(sb);
  $("to").hidden = true; // direct messages are not encrypted: only the room is offered
  const keys = e2e.subscribe(`${topic}/keys`);
  keys.on("roomKey", () => status());
  await keys.ready;
  const sub = e2e.subscribe(topic);
  sub.on("message", (m) => line(`${m.e2e.from}: ${m.data?.text}`, "e2e"));
  sub.on("undecryptable", (m) =>
    // Plaintext sent by a page that does not encrypt: shown, and marked as such.
    m.error.code === "malformed" && m.data?.text !== undefined
      ? line(`${m.data?.name}: ${m.data.text} (not encrypted)`, "plain")
      : locked(),
  );
  try {
    await e2e.createRoom(topic, { keyTopic: `${topic}/keys` });
    admin = true;
  } catch (error) {
    if (error.code !== "conflict") throw error; // the room exists: its admin shares the key
  }
  await sub.ready;
  status();
}

/** The admin gives the room's key to a member who joined signed in with a key. */
async function share(user) {
  if (!admin || !user || user === e2e.user) return;
  try {
    if ((await e2e.keysOf(user)).length === 0) return; // not signed in to encryption: sees envelopes
    await e2e.addMember(topic, user);
    holders.add(user);
  } catch (error) {
    if (error.code !== "not_found") $("error").textContent = error.message;
  }
}

/** The admin rotates when a member's last page left, so they read nothing after. */
async function unshare(user) {
  if (!admin || !holders.has(user) || [...members.values()].includes(user)) return;
  holders.delete(user);
  try {
    await e2e.removeMember(topic, user);
    status();
  } catch (error) {
    $("error").textContent = error.message;
  }
}

function status() {
  const epoch = e2e.epochOf(topic);
  $("e2e-status").hidden = false;
  $("e2e-status").textContent = epoch
    ? `End-to-end encrypted · key epoch ${epoch} · your key ${e2e.fingerprint.slice(0, 19)}…`
    : "End-to-end encrypted · waiting for the room's key from its admin";
}

const isEnvelope = (data) => data !== null && typeof data === "object" && "ciphertext" in data && "protected" in data;

function locked() {
  line("encrypted message (no key for it here)", "encrypted");
}

$("say").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("text").value;
  const to = $("to").value;
  $("error").textContent = "";
  try {
    if (e2e) {
      await e2e.publishToRoom(topic, { text });
    } else if (to) {
      await sb.send({ client: to }, { text }, { event: "chat" });
      line(`you → ${members.get(to)}: ${text}`, "private");
    } else {
      await sb.publish(topic, { name: $("name").value.trim(), text });
    }
    $("text").value = "";
  } catch (error) {
    $("error").textContent = error.message;
  }
});

function line(text, cls = "") {
  $("messages").append(h("li", cls ? { class: cls } : {}, text));
}

function renderMembers() {
  $("members").replaceChildren(
    ...[...members].map(([id, name]) => h("li", { "data-client": id }, id === sb.clientId ? `${name} (you)` : name)),
  );
  const chosen = $("to").value;
  $("to").replaceChildren(
    h("option", { value: "" }, "everyone"),
    ...[...members].filter(([id]) => id !== sb.clientId).map(([id, name]) => h("option", { value: id }, `only ${name}`)),
  );
  if (members.has(chosen)) $("to").value = chosen;
}
