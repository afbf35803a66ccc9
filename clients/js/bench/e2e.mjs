// Cost per message of end-to-end encryption on WebCrypto (src/e2e.js), in Node and in
// headless Chromium (Debian's, through playwright-core), for 64 B, 1 KiB and 16 KiB:
// a sealed message to one RSA-3072 key (seal; open, which includes the RSA-OAEP unwrap)
// and a room message (encrypt; open with the room key held). The same function runs in
// both; the page gets the module as the daemon serves it (dist/switchboard-e2e.js).
//
//   node bench/e2e.mjs [milliseconds per case, default 400]

import { readFileSync } from "node:fs";
import * as e2e from "../src/e2e.js";
import { launchChromium, startSite } from "../test/chromium.mjs";

const BUDGET = Number(process.argv[2] ?? 400);

/** Runs in Node and in the page: µs per operation for each size and kind. */
async function measure(E, budget) {
  const time = async (op) => {
    for (let i = 0; i < 3; i++) await op(); // warm
    let n = 0;
    const start = performance.now();
    while (performance.now() - start < budget) {
      await op();
      n++;
    }
    return ((performance.now() - start) * 1000) / n;
  };
  const me = await E.generateKeyPair({ bits: 3072 });
  const key = E.createRoomKey("bench/room");
  const ring = new E.Keyring();
  ring.insert(key);
  const rows = [];
  for (const size of [64, 1024, 16384]) {
    const plaintext = new Uint8Array(size).fill(120);
    const sealed = await E.seal(plaintext, [me.jwk], { topic: "bench/dm", from: "b" });
    const room = await E.roomEncrypt(key, "bench/room", "b", plaintext);
    rows.push({
      size,
      sealEncrypt: await time(() => E.seal(plaintext, [me.jwk], { topic: "bench/dm", from: "b" })),
      sealDecrypt: await time(() => E.openSealed(sealed, me)),
      roomEncrypt: await time(() => E.roomEncrypt(key, "bench/room", "b", plaintext)),
      roomDecrypt: await time(() => ring.open(room, "history")),
    });
  }
  return rows;
}

function print(where, rows) {
  console.log(`\n${where}: µs per message (sealed: one RSA-3072 recipient)`);
  console.log("| size | sealed encrypt | sealed decrypt | room encrypt | room decrypt |");
  console.log("| ---: | ---: | ---: | ---: | ---: |");
  const f = (us) => (us >= 100 ? us.toFixed(0) : us.toFixed(1));
  for (const r of rows) {
    console.log(`| ${r.size} B | ${f(r.sealEncrypt)} | ${f(r.sealDecrypt)} | ${f(r.roomEncrypt)} | ${f(r.roomDecrypt)} |`);
  }
}

print(`Node ${process.version}`, await measure(e2e, BUDGET));

// A page on 127.0.0.1 (a secure context, so crypto.subtle exists) with the served build.
const bundle = readFileSync(new URL("../dist/switchboard-e2e.js", import.meta.url), "utf8");
const site = await startSite((req, res) => {
  res.writeHead(200, { "content-type": req.url === "/e2e.js" ? "text/javascript" : "text/html" });
  res.end(req.url === "/e2e.js" ? bundle : '<!doctype html><script src="/e2e.js"></script>');
});
const browser = await launchChromium();
try {
  const page = await browser.newPage();
  await page.goto(site.url);
  const version = browser.version();
  const rows = await page.evaluate(
    ([source, budget]) => (0, eval)(`(${source})`)(window.SwitchboardE2E, budget),
    [measure.toString(), BUDGET],
  );
  print(`Chromium ${version}`, rows);
} finally {
  await browser.close();
  site.close();
}
