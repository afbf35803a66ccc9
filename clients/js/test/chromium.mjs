// Browser-test helpers: a test site with a daemon that allows it (Chromium itself is
// launched by daemon.mjs's launchChromium).

import http from "node:http";
import { startDaemon } from "./daemon.mjs";

export { launchChromium } from "./daemon.mjs";

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
