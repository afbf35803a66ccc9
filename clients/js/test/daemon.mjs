// Test harness: the real `switchboard` binary as a child process (as tests/common
// does for the Rust tests), a TCP relay that can be cut, JWTs signed by hand, and a
// poll-until helper. The binary: $SWITCHBOARD_BIN, else the cargo build's.

import { execFile, spawn, spawnSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import WebSocket from "ws";
import { Client } from "../src/index.js";

const repo = join(dirname(fileURLToPath(import.meta.url)), "../../..");

export function binary() {
  const candidates = [
    process.env.SWITCHBOARD_BIN,
    process.env.CARGO_TARGET_DIR && join(process.env.CARGO_TARGET_DIR, "debug/switchboard"),
    join(repo, "target/debug/switchboard"),
  ].filter(Boolean);
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`no switchboard binary (tried ${candidates.join(", ")}): run cargo build, or set SWITCHBOARD_BIN`);
  return found;
}

export const SECRET = "a-test-secret-that-is-long-enough-for-hs256";
export const ADMIN = "admin-token-for-the-tests-0123456789";

/** An HS256 JWT signed here, not by the daemon's code, so the two cannot share a bug. */
export function jwt(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const input = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${input}.${createHmac("sha256", SECRET).update(input).digest("base64url")}`;
}

export const now = () => Math.floor(Date.now() / 1000);

/** The configuration the SDK tests share: anonymous clients and JWTs, presence, history. */
export function config(dir, extra = "") {
  writeFileSync(join(dir, "jwt.secret"), `${SECRET}\n`);
  writeFileSync(join(dir, "admin.token"), ADMIN);
  return `
[auth]
allow_anonymous = true
admin_token_file = "${join(dir, "admin.token")}"
leeway = "1s"
[[auth.jwt]]
algorithm = "HS256"
secret_file = "${join(dir, "jwt.secret")}"

[presence]
topics = ["room/+"]

[history]
[[history.topics]]
filter = "log/#"
keep = 1000000
[[history.topics]]
filter = "short/#"
keep = 5

[ws]
publish_rate = 1000000
publish_burst = 1000000
${extra}`;
}

/**
 * One daemon for a test file: started before its tests, stopped after them with every
 * client `client()` made. `client(options, url)` connects an SDK client (to the
 * daemon unless `url` says otherwise) with short reconnect delays.
 */
export function useDaemon(options = {}) {
  const clients = [];
  const suite = {
    daemon: null,
    client(clientOptions = {}, url = suite.daemon.wsUrl()) {
      const sb = new Client(url, { WebSocket, minReconnectDelay: 10, maxReconnectDelay: 100, ...clientOptions });
      clients.push(sb);
      return sb;
    },
  };
  before(async () => {
    suite.daemon = await startDaemon(options);
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await suite.daemon?.dispose();
  });
  return suite;
}

/** Starts the daemon on free ports (or `env`'s) and waits for its `listening` line. */
export async function startDaemon({ extra = "", env = {} } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "sb-js-"));
  const path = join(dir, "switchboard.toml");
  writeFileSync(path, config(dir, extra));
  const daemon = { dir, path, env, child: null, logs: [] };
  await launch(daemon);
  daemon.wsUrl = () => `ws://${daemon.http}/ws`;
  daemon.stop = () => stop(daemon);
  /** SIGTERM, then start again on the same HTTP address and data directory. */
  daemon.restart = async () => {
    await stop(daemon);
    daemon.env = { ...daemon.env, SWITCHBOARD_HTTP_LISTEN: daemon.http };
    await launch(daemon);
  };
  daemon.dispose = async () => {
    await stop(daemon);
    rmSync(dir, { recursive: true, force: true });
  };
  return daemon;
}

function launch(daemon) {
  const child = spawn(binary(), ["serve", "--config", daemon.path], {
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      SWITCHBOARD_DATA_DIR: join(daemon.dir, "data"),
      SWITCHBOARD_LOG_LEVEL: "info",
      SWITCHBOARD_HTTP_LISTEN: "127.0.0.1:0",
      SWITCHBOARD_MQTT_LISTEN: "127.0.0.1:0",
      SWITCHBOARD_MQTT_WS_LISTEN: "127.0.0.1:0",
      ...daemon.env,
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  daemon.child = child;
  return new Promise((resolve, reject) => {
    let buffered = "";
    const timer = setTimeout(() => reject(new Error(`daemon did not listen:\n${daemon.logs.join("\n")}`)), 20_000);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      buffered += chunk;
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        daemon.logs.push(line);
        const at = line.indexOf("listening ");
        if (at < 0) continue;
        const fields = Object.fromEntries(
          line
            .slice(at + 10)
            .trim()
            .split(/\s+/)
            .map((kv) => kv.split("=")),
        );
        daemon.http = fields.http;
        daemon.mqttPort = Number(fields.mqtt?.split(":").pop());
        clearTimeout(timer);
        resolve();
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`daemon exited (${code}):\n${daemon.logs.join("\n")}`));
    });
  });
}

function stop(daemon) {
  const child = daemon.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill("SIGKILL"), 15_000);
    child.once("exit", () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

/**
 * A TCP relay in front of the daemon: `cut()` drops every connection through it,
 * `hold()` refuses new ones until `release()`, `freeze()` stops passing the server's
 * bytes on (the connection stays open: replies go missing).
 */
export async function relay(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const sockets = new Set();
  const downstream = new Set();
  let held = false;
  const server = net.createServer((inbound) => {
    if (held) return inbound.destroy();
    const outbound = net.connect(port, host);
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
    const pair = { outbound, inbound };
    downstream.add(pair);
    outbound.on("close", () => downstream.delete(pair));
    inbound.on("close", () => outbound.destroy());
    outbound.on("close", () => inbound.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}/ws`,
    cut() {
      for (const s of sockets) s.destroy();
    },
    freeze() {
      for (const { outbound, inbound } of downstream) {
        outbound.unpipe(inbound);
        outbound.pause();
      }
    },
    hold() {
      held = true;
    },
    release() {
      held = false;
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Polls `condition` until it holds; fails with `what` after `ms`. */
export async function until(condition, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The next value `emitter` emits as `type` (an SDK client or subscription). */
export function next(emitter, type, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (off(), reject(new Error(`no ${type} within ${ms} ms`))), ms);
    const off = emitter.once(type, (value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

const run = promisify(execFile);

/** Runs mosquitto_pub against `daemon` to completion; `args` are extra flags (-r, -f …). */
export const mqttPublish = (daemon, topic, payload, args = []) =>
  run("mosquitto_pub", ["-h", "127.0.0.1", "-p", String(daemon.mqttPort), "-t", topic, ...(payload === null ? [] : ["-m", payload]), ...args]);

/** A mosquitto_sub that has its SUBACK; `lines` fills with its output, `stop()` kills it. */
export async function mqttSubscribe(daemon, topic, args = []) {
  // Line-buffered, so the SUBACK debug line is seen while it runs.
  const child = spawn("stdbuf", ["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", String(daemon.mqttPort), "-d", "-t", topic, ...args]);
  const lines = [];
  let rest = "";
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (chunk) => {
    rest += chunk;
    const parts = rest.split("\n");
    rest = parts.pop();
    lines.push(...parts);
  });
  await until(() => lines.some((l) => l.includes("SUBACK")), "mosquitto_sub's SUBACK").catch((error) => {
    child.kill();
    throw error;
  });
  return { lines, child, stop: () => child.kill() };
}

/** Debian's Chromium, headless (no browser is downloaded); $CHROMIUM overrides the path. */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking"],
  });
}

/** A free TCP port on 127.0.0.1 (bound, read, released). */
async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Resolves once something accepts connections on `port`. */
function listening(port, what) {
  return until(
    () =>
      new Promise((resolve) => {
        const socket = net.connect(port, "127.0.0.1", () => resolve(socket.end() && true));
        socket.on("error", () => resolve(false));
      }),
    `${what} to listen`,
  );
}

/**
 * Debian's redis-server on a free port, in memory, listening once this returns (for
 * `[cluster]`, docs/cluster.md); `null` when it is not installed and the run does not
 * require it (the test script sets CLUSTER_TOOLS=required, and there it fails).
 */
export async function startRedis() {
  if (spawnSync("redis-server", ["--version"]).error) {
    if (process.env.CLUSTER_TOOLS === "required") throw new Error("redis-server is required (CLUSTER_TOOLS=required)");
    return null;
  }
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  await listening(port, "redis-server");
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    dispose: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once("exit", resolve);
        child.kill("SIGKILL");
      }),
  };
}

/**
 * Debian's Mosquitto on a free port, anonymous and in memory, listening once this
 * returns: another broker for bridge tests. `stop()` kills it; `start()` starts it again
 * on the same port.
 */
export async function startMosquitto() {
  const dir = mkdtempSync(join(tmpdir(), "sb-mosquitto-"));
  const port = await freePort();
  const conf = join(dir, "mosquitto.conf");
  // As root, Mosquitto would drop to user `mosquitto`; unprivileged it keeps its user.
  const root = process.getuid?.() === 0 ? "user root\n" : "";
  writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\n${root}`);
  const broker = { port, child: null };
  broker.start = async () => {
    broker.child = spawn("mosquitto", ["-c", conf], { stdio: "ignore" });
    await listening(port, "mosquitto");
  };
  broker.stop = async () => {
    const child = broker.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise((resolve) => {
      child.once("exit", resolve);
      child.kill("SIGKILL");
    });
  };
  broker.dispose = async () => {
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  await broker.start();
  return broker;
}
