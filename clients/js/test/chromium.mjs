// Browser-test helpers: Debian's Chromium through playwright-core (nothing downloads a
// browser; $CHROMIUM overrides the path), and a test site with a daemon that allows it.

import http from "node:http";
import { chromium } from "playwright-core";
import { startDaemon } from "./daemon.mjs";

export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking"],
  });
}

/** An HTTP site on 127.0.0.1 (a real origin, and a secure context) serving `handler`. */
export async function startSite(handler) {
  const site = http.createServer(handler);
  await new Promise((resolve) => site.listen(0, "127.0.0.1", resolve));
  site.url = `http://127.0.0.1:${site.address().port}`;
  return site;
}

/** A site and a daemon that accepts pages from it. */
export async function startSiteAndDaemon(handler) {
  const site = await startSite(handler);
  const daemon = await startDaemon({ env: { SWITCHBOARD_AUTH_ALLOWED_ORIGINS: site.url } });
  return { site, daemon };
}
