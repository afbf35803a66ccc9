// Node 20: subscribe, publish, read with an async iterator, then close.
// Run: node examples/node.mjs ws://127.0.0.1:8700/ws   (needs the `ws` package)
import WebSocket from "ws";
import { Client } from "switchboard-client";

const sb = new Client(process.argv[2] ?? "ws://127.0.0.1:8700/ws", { WebSocket });
sb.on("disconnected", ({ code, reconnect, delay }) => console.log(`closed ${code}; retry in ${delay} ms: ${reconnect}`));

const temps = sb.subscribe("home/+/temperature", { last: 10 });
console.log("subscribed", await temps.ready);
const { seq } = await sb.publish("home/kitchen/temperature", 21.5, { retain: true });
console.log("published as", seq);

for await (const msg of temps) {
  console.log(msg.topic, msg.data, msg.seq);
  break; // unsubscribes
}
await sb.close();
