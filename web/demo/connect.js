// What every demo page shares: a client of the daemon that served the page (anonymous,
// or with the token given as `#token=…` in the page's address: a fragment never reaches
// a server or a log), and a tiny element builder that inserts text, never markup.

import { Client } from "/sdk/switchboard.mjs";

export function connect(options = {}) {
  const token = new URLSearchParams(location.hash.slice(1)).get("token") ?? undefined;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  return new Client(`${proto}://${location.host}/ws`, { token, maxReconnectDelay: 5000, ...options });
}

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : String(c ?? ""));
  return el;
}
