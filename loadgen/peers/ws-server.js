#!/usr/bin/env node
'use strict';
// Benchmark peer: a plain `ws` pub/sub server speaking the subset of
// switchboard's JSON protocol the harness uses (sub, unsub, pub, ping), with
// exact topic matching. See README.md for the contract.

const http = require('node:http');
const common = require('./common');

const { WebSocketServer, WebSocket } = common.requireDep('ws');

const USAGE = 'usage: node ws-server.js [--host 127.0.0.1] [--port 0] [--deflate]';
// --deflate: permessage-deflate on every frame (the harness's --deflate), compressed by
// ws per connection with no context takeover, as switchboard's clients offer.
const deflate = process.argv.includes('--deflate');
const opts = common.parseArgs(process.argv.slice(2).filter((a) => a !== '--deflate'), USAGE);

// Past this much unsent data a subscriber is too slow: drop its copy rather
// than let one slow reader grow the process's memory without bound.
const MAX_BUFFERED_BYTES = 16 * common.MIB;

const topics = new Map(); // topic -> Set<WebSocket>
const subsOf = new WeakMap(); // WebSocket -> Set<topic>, for cleanup on close
const counters = { published: 0, delivered: 0, dropped: 0 };

// Serialises once and hands the same bytes to every subscriber; a Buffer
// sent with binary:false is a text frame, so ws skips a UTF-8 encode per send.
function publish(topic, data) {
  counters.published++;
  const subs = topics.get(topic);
  if (!subs) return 0;
  const frame = Buffer.from(JSON.stringify({ op: 'msg', topic, data }));
  let delivered = 0;
  for (const sock of subs) {
    if (sock.readyState !== WebSocket.OPEN) continue;
    if (sock.bufferedAmount > MAX_BUFFERED_BYTES) {
      counters.dropped++;
      continue;
    }
    sock.send(frame, { binary: false });
    delivered++;
  }
  counters.delivered += delivered;
  return delivered;
}

function subscribe(sock, topic) {
  let subs = topics.get(topic);
  if (!subs) topics.set(topic, (subs = new Set()));
  subs.add(sock);
  subsOf.get(sock).add(topic);
}

function unsubscribe(sock, topic) {
  const subs = topics.get(topic);
  if (subs) {
    subs.delete(sock);
    if (subs.size === 0) topics.delete(topic);
  }
  subsOf.get(sock).delete(topic);
}

function reply(sock, body) {
  if (sock.readyState === WebSocket.OPEN) sock.send(JSON.stringify(body));
}

function badRequest(sock, id, message) {
  const body = { op: 'error' };
  if (id !== undefined) body.id = id;
  body.code = 'bad_request';
  body.message = message;
  reply(sock, body);
}

function ok(sock, id) {
  if (id !== undefined) reply(sock, { op: 'ok', id });
}

function handleMessage(sock, raw) {
  let req;
  try {
    req = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    return badRequest(sock, undefined, `invalid JSON: ${err.message}`);
  }
  if (req === null || typeof req !== 'object' || Array.isArray(req)) {
    return badRequest(sock, undefined, 'a request must be a JSON object');
  }
  const { id, op, topic } = req;
  const needsTopic = op === 'sub' || op === 'unsub' || op === 'pub';
  if (needsTopic && (typeof topic !== 'string' || topic === '')) {
    return badRequest(sock, id, `"${op}" needs "topic", a non-empty string`);
  }
  switch (op) {
    case 'sub':
      subscribe(sock, topic);
      return ok(sock, id);
    case 'unsub':
      unsubscribe(sock, topic);
      return ok(sock, id);
    case 'pub':
      // As in switchboard, an absent data is delivered as null.
      publish(topic, req.data === undefined ? null : req.data);
      return ok(sock, id);
    case 'ping':
      return ok(sock, id);
    default:
      return badRequest(sock, id, typeof op === 'string' ? `unknown op "${op}"` : 'missing "op"');
  }
}

const server = http.createServer(
  common.httpHandler({
    stats: () => ({ connections: wss.clients.size, ...counters }),
    publish,
  }),
);

const wss = new WebSocketServer({
  server,
  path: '/ws',
  perMessageDeflate: deflate
    ? { threshold: 0, zlibDeflateOptions: { level: 6 }, serverNoContextTakeover: true, clientNoContextTakeover: true }
    : false,
  maxPayload: common.MAX_MESSAGE_BYTES,
});

// ws re-emits the http server's errors (e.g. EADDRINUSE) here; listen()
// already reports them, but an unheard 'error' event would throw first.
wss.on('error', () => {});

wss.on('connection', (sock) => {
  subsOf.set(sock, new Set());
  sock.on('message', (raw) => handleMessage(sock, raw));
  sock.on('close', () => {
    for (const topic of subsOf.get(sock)) unsubscribe(sock, topic);
  });
  // Protocol errors (oversized frame, bad UTF-8) close the socket; without a
  // listener the 'error' event would crash the whole server.
  sock.on('error', () => {});
});

common.listen(server, opts);

common.onShutdown(
  () =>
    new Promise((resolve) => {
      for (const sock of wss.clients) sock.terminate();
      wss.close();
      server.close(() => resolve());
    }),
);
