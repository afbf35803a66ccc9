// What open dashboards cost the daemon during the fan-out benchmark: the same case
// (`cargo bench --bench fanout -- --subs 1000 --idle 0 --only switchboard --rounds 1`)
// run alternately with 0 and with N dashboards on the overview page (its live chart
// polls /stats every second, plus /info, /bridges and /webhooks, and holds a WebSocket
// subscribed to `$devices/+`), all pages in one headless Chromium. The bench starts
// this file again beside each server (FANOUT_BENCH_ATTACH, benches/fanout/procs.rs),
// which opens the pages and samples the server's resident memory until the case ends.
// Chromium inherits the bench's core (1); the server has core 0 to itself.
//
//   node clients/js/bench/dashboards.mjs [--pages 5] [--alternations 2]
//   node clients/js/bench/dashboards.mjs --idle [--pages 5] [--seconds 20]
//
// Reports per run: deliveries/s at saturation, the server's CPU at saturation and at
// the light load (100,000 deliveries/s), and its peak RSS. Needs Debian's chromium
// (or $CHROMIUM) and the release build `cargo bench` makes.
//
// `--idle`: the dashboards' own cost, without the bench: a daemon ($SWITCHBOARD_BIN,
// else the release build) with nothing else to do, its CPU time over `--seconds` with
// no dashboard, then with the pages open.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ADMIN, launchChromium, startDaemon } from "../test/daemon.mjs";

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : fallback;
};
const pages = Number(option("--pages", 5));

if (args.includes("--attach")) await attach(pages, option("--out"));
else if (args.includes("--idle")) await idle(pages, Number(option("--seconds", 20)));
else drive(pages, Number(option("--alternations", 2)));

/** A process's CPU time (user + system, all threads) in seconds. */
function cpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in USER_HZ
}

async function idle(count, seconds) {
  const repo = join(dirname(fileURLToPath(import.meta.url)), "../../..");
  process.env.SWITCHBOARD_BIN ??= join(process.env.CARGO_TARGET_DIR ?? join(repo, "target"), "release/switchboard");
  const daemon = await startDaemon();
  const pid = daemon.child.pid;
  const window = async () => {
    const start = cpuSeconds(pid);
    await new Promise((r) => setTimeout(r, seconds * 1000));
    return (cpuSeconds(pid) - start) / seconds;
  };
  const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]) / 1024;
  const before = { cpu: await window(), rss: rss() };
  const browser = await launchChromium();
  const context = await browser.newContext();
  await context.addInitScript((token) => sessionStorage.setItem("switchboard.token", token), ADMIN);
  for (let i = 0; i < count; i++) {
    const page = await context.newPage();
    await page.goto(`http://${daemon.http}/dashboard/#overview`);
    await page.waitForFunction(() => Number(document.getElementById("rate")?.dataset.points) >= 1);
  }
  const open = { cpu: await window(), rss: rss() };
  await browser.close();
  await daemon.dispose();
  const pct = (x) => `${(x * 100).toFixed(2)}%`;
  console.log(`daemon CPU over ${seconds} s: ${pct(before.cpu)} of a core with no dashboard, ${pct(open.cpu)} with ${count} open`);
  console.log(`daemon RSS: ${before.rss.toFixed(1)} MiB, then ${open.rss.toFixed(1)} MiB`);
}

/** Beside one server: open `count` overview pages, say so, sample RSS until stdin ends. */
async function attach(count, out) {
  const { SB_HTTP: http, SB_PID: pid } = process.env;
  let browser = null;
  if (count > 0) {
    browser = await launchChromium();
    const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
    // The credential as the login form leaves it: in the tab's session storage.
    await context.addInitScript((token) => sessionStorage.setItem("switchboard.token", token), ADMIN);
    await Promise.all(
      Array.from({ length: count }, async () => {
        const page = await context.newPage();
        await page.goto(`http://${http}/dashboard/#overview`);
        // The chart has its first point: /stats answered twice, the poll is running.
        await page.waitForFunction(() => Number(document.getElementById("rate")?.dataset.points) >= 1, null, { timeout: 30_000 });
      }),
    );
  }
  let peak = 0;
  const sample = () => {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    peak = Math.max(peak, Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0));
    writeFileSync(out, JSON.stringify({ peak_rss_kib: peak }));
  };
  sample();
  const timer = setInterval(() => {
    try {
      sample();
    } catch {
      // The server is gone: the case is over.
    }
  }, 200);
  process.stdout.write(`${count} dashboard(s) open on ${http}\n`);
  process.stdin.resume();
  await new Promise((resolve) => process.stdin.on("end", resolve));
  clearInterval(timer);
  await browser?.close();
  process.exit(0);
}

/** Runs the bench case alternately without and with dashboards; prints a table. */
function drive(count, alternations) {
  const repo = join(dirname(fileURLToPath(import.meta.url)), "../../..");
  const target = process.env.CARGO_TARGET_DIR ?? join(repo, "target");
  const dir = mkdtempSync(join(tmpdir(), "sb-dashboards-"));
  const tokenFile = join(dir, "admin.token");
  writeFileSync(tokenFile, ADMIN);
  const self = fileURLToPath(import.meta.url);
  const rows = [];
  for (let round = 1; round <= alternations; round++) {
    for (const n of [0, count]) {
      const out = join(dir, `rss-${round}-${n}.json`);
      console.error(`round ${round}/${alternations}: ${n} dashboard(s)…`);
      execFileSync(
        "cargo",
        ["bench", "--bench", "fanout", "--", "--subs", "1000", "--idle", "0", "--only", "switchboard", "--rounds", "1"],
        {
          cwd: repo,
          stdio: ["ignore", "ignore", "inherit"],
          env: {
            ...process.env,
            // The daemon the bench starts inherits this: the dashboards log in as admin.
            SWITCHBOARD_AUTH_ADMIN_TOKEN_FILE: tokenFile,
            FANOUT_BENCH_ATTACH: `${JSON.stringify(process.execPath)} ${JSON.stringify(self)} --attach --pages ${n} --out ${JSON.stringify(out)}`,
          },
        },
      );
      const run = JSON.parse(readFileSync(join(target, "fanout-bench.json"), "utf8"));
      const c = run.cases[0];
      rows.push({
        round,
        dashboards: n,
        deliveries_per_sec: Math.round(c.saturation.deliveries_per_sec),
        server_cpu_saturation: c.saturation.server_cpu,
        server_cpu_light: c.light.server_cpu,
        other_cpu_light: c.light.other_cpu,
        peak_rss_mib: JSON.parse(readFileSync(out, "utf8")).peak_rss_kib / 1024,
      });
    }
  }
  const pct = (x) => `${(x * 100).toFixed(1)}%`;
  console.log("| round | dashboards | deliveries/s (saturation) | server CPU, saturation | server CPU, light load | other CPU, light load | server peak RSS |");
  console.log("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const r of rows) {
    console.log(
      `| ${r.round} | ${r.dashboards} | ${r.deliveries_per_sec.toLocaleString("en")} | ${pct(r.server_cpu_saturation)} | ${pct(r.server_cpu_light)} | ${pct(r.other_cpu_light)} | ${r.peak_rss_mib.toFixed(1)} MiB |`,
    );
  }
}
