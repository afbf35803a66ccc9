// Every call of the SDK, type-checked against src/index.d.ts (`npm run check`).
import {
  Client,
  SwitchboardError,
  backoffDelay,
  closeAdvice,
  matches,
  type Message,
  type Member,
  type SubscribeResult,
} from "switchboard-client";

export async function everyCall(url: string): Promise<void> {
  let tokens = 0;
  const sb = new Client(url, {
    getToken: async () => `token-${++tokens}`,
    minReconnectDelay: 100,
    maxReconnectDelay: 10_000,
    timeout: 5000,
  });
  sb.on("state", ({ previous, current }) => console.log(previous, "->", current));
  sb.on("disconnected", ({ code, reconnect }) => console.log(code, reconnect));
  sb.on("dm", (dm) => console.log(dm.from, dm.data));
  sb.on("join", (j) => console.log(j.topic, j.client));
  sb.on("gap", (g) => console.log("resync", g.filter, g.recovered));
  const welcome = await sb.connected();
  console.log(welcome.client, sb.clientId, sb.expiresAt);

  const sub = sb.subscribe("home/+/temperature", { onMessage: (m: Message) => console.log(m.data) });
  const result: SubscribeResult = await sub.ready;
  console.log(result.epoch, result.seq);
  sub.on("gap", () => {});
  for await (const m of sub) {
    console.log(m.topic, m.seq, m.retained === true);
    break;
  }
  const { seq } = await sb.publish("home/kitchen/temperature", { t: 21.5 }, { event: "reading", retain: true });
  const { delivered } = await sb.send({ user: "ann" }, "hi", { event: "hello" });
  const members: Member[] = await sb.presence("room/1");
  await sb.setInfo({ name: "Ann" });
  const rtt: number = await sb.ping();
  const response = await sb.request("POST", "/api/v1/publish", { topic: "a", data: 1 });
  const recording = await sb.startRecording({ name: "demo", topics: ["home/#"] });
  await sb.stopRecording(recording.id);
  await sb.refresh();
  await sb.call("ping");
  try {
    await sb.publish("a/#", 1);
  } catch (error) {
    if (error instanceof SwitchboardError) console.log(error.code, error.closeCode);
  }
  console.log(seq, delivered, members.length, rtt, response.status, backoffDelay(3, 100, 10_000), closeAdvice(4001));
  console.log(matches("a/+", "a/b"));
  await sb.close();
}
