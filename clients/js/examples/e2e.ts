// The end-to-end encryption module's calls, type-checked against src/secure.d.ts.
import { Client } from "switchboard-client";
import { E2E, OpenError, indexedDbStore, memoryStore, type OpenedMessage } from "switchboard-client/e2e";

export async function encryptedRoom(url: string, token: string): Promise<void> {
  const sb = new Client(url, { token });
  const me = await E2E.create(sb, { store: typeof indexedDB === "undefined" ? memoryStore() : indexedDbStore() });
  console.log(`my key ${me.kid}: ${me.fingerprint}`);

  await me.publishSealed("dm/alice/bob", { text: "hi" }, { to: ["bob"] });

  const { keyTopic } = await me.createRoom("chat/lobby", { members: ["bob", "carol"] });
  const sub = me.subscribe("chat/lobby", { last: 50 });
  sub.on("message", (m: OpenedMessage) => console.log(m.e2e.from, m.e2e.epoch, m.data));
  sub.on("undecryptable", (m) => {
    const e: OpenError = m.error;
    console.warn(`not opened on ${m.topic}: ${e.code}`);
  });
  await me.publishToRoom("chat/lobby", { text: "hello room" });
  await me.addMember("chat/lobby", "dave");
  const { epoch } = await me.removeMember("chat/lobby", "carol");
  console.log(keyTopic, epoch, me.epochOf("chat/lobby"));

  const other = await E2E.create(sb, { user: "bob", register: false });
  const keys = await other.joinRoom("chat/lobby", { timeout: 5000 });
  await other.whenRoomKey("chat/lobby", epoch);
  await keys.unsubscribe();
  await sb.close();
}
