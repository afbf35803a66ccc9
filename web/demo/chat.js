// Chat: a room is the presence topic room/<name> ([presence] topics = ["room/+"]):
// subscribing makes you a member, everyone subscribed hears public messages published
// to it, and a private message is a direct message (`send`) to one member's client id.

import { connect, h } from "./connect.js";

const $ = (id) => document.getElementById(id);
const members = new Map();
let sb;
let topic;

$("join").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("name").value.trim();
  topic = `room/${$("room").value.trim()}`;
  sb = connect({ user: name });
  sb.on("dm", (m) => {
    if (m.event === "chat") line(`${m.from_user ?? m.from} → you: ${m.data?.text}`, "private");
  });
  const sub = sb.subscribe(topic);
  sub.on("message", (m) => line(`${m.data?.name}: ${m.data?.text}`));
  sb.on("join", (m) => m.topic === topic && (members.set(m.client, m.user ?? m.client), renderMembers()));
  sb.on("leave", (m) => m.topic === topic && (members.delete(m.client), renderMembers()));
  try {
    await sub.ready;
    for (const m of await sb.presence(topic)) members.set(m.client, m.user ?? m.client);
  } catch (error) {
    $("error").textContent = error.message;
  }
  $("join").hidden = true;
  $("room-view").hidden = false;
  $("title").textContent = `${topic.slice(5)} — you are ${name}`;
  renderMembers();
});

$("say").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("text").value;
  const to = $("to").value;
  $("error").textContent = "";
  try {
    if (to) {
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
