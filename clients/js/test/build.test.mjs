// The committed single-file builds are what scripts/build.mjs makes from src/ (the
// daemon embeds them; tests/sdk.rs checks the same without Node), and the
// hand-written types match the examples that use every call.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const root = join(dirname(fileURLToPath(import.meta.url)), "..");

test("dist/ is a fresh build of src/", async () => {
  const result = await run(process.execPath, ["scripts/build.mjs", "--check"], { cwd: root }).catch((e) => e);
  assert.equal(result.code ?? 0, 0, `${result.stderr}`);
});

test("the examples type-check against src/index.d.ts", async () => {
  const tsc = join(root, "node_modules/typescript/bin/tsc");
  const result = await run(process.execPath, [tsc, "--noEmit", "-p", "examples"], { cwd: root }).catch((e) => e);
  assert.equal(result.code ?? 0, 0, `${result.stdout}${result.stderr}`);
});
