// Builds the single-file bundles the daemon serves and `<script src>` pages use:
//   dist/switchboard.js   an IIFE defining the global `Switchboard`
//   dist/switchboard.mjs  one ES module
//   dist/switchboard-e2e.js, .mjs   the opt-in end-to-end encryption module (src/secure.js;
//                                   global `SwitchboardE2E`), apart so the core stays small
// Both start with a banner naming a hash of src/*.js, so a test without Node
// (tests/sdk.rs) can tell that the committed bundles are stale.
//
//   node scripts/build.mjs           write dist/
//   node scripts/build.mjs --check   exit 1 when dist/ differs from a fresh build

import { createHash } from "node:crypto";
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));

/** sha256 over `name NUL content NUL` of every src/*.js, by name; the first 16 hex digits. */
export function sourceHash() {
  const hash = createHash("sha256");
  const names = readdirSync(join(root, "src"))
    .filter((n) => n.endsWith(".js"))
    .sort();
  for (const name of names) {
    hash.update(`${name}\0`);
    hash.update(readFileSync(join(root, "src", name)));
    hash.update("\0");
  }
  return hash.digest("hex").slice(0, 16);
}

async function bundle(format, entry = "src/index.js", globalName = "Switchboard") {
  const result = await build({
    entryPoints: [join(root, entry)],
    bundle: true,
    format,
    globalName: format === "iife" ? globalName : undefined,
    minify: true,
    target: "es2022",
    legalComments: "none",
    write: false,
    banner: { js: `/* switchboard-client ${version} MIT sources:${sourceHash()} */` },
  });
  return result.outputFiles[0].text;
}

const outputs = {
  "dist/switchboard.js": await bundle("iife"),
  "dist/switchboard.mjs": await bundle("esm"),
  "dist/switchboard-e2e.js": await bundle("iife", "src/secure.js", "SwitchboardE2E"),
  "dist/switchboard-e2e.mjs": await bundle("esm", "src/secure.js"),
};

if (process.argv.includes("--check")) {
  const stale = Object.entries(outputs).filter(([path, text]) => {
    try {
      return readFileSync(join(root, path), "utf8") !== text;
    } catch {
      return true;
    }
  });
  for (const [path] of stale) console.error(`${path} is stale: run \`npm run build\` in clients/js and commit it`);
  process.exit(stale.length > 0 ? 1 : 0);
} else {
  for (const [path, text] of Object.entries(outputs)) {
    writeFileSync(join(root, path), text);
    console.log(`${path}: ${text.length} bytes`);
  }
}
