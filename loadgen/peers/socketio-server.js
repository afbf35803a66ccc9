#!/usr/bin/env node
'use strict';
// Benchmark peer: the idiomatic socket.io v4 pub/sub server. Topics are rooms;
// `sub`/`unsub` join and leave, `pub` emits `msg` to the room. See README.md.
// `--adapter redis` or `--adapter redis-streams` makes it one of several processes
// sharing the Redis at `--redis`: a room broadcast then reaches every process's members,
// through @socket.io/redis-adapter (Redis PUB/SUB) or @socket.io/redis-streams-adapter
// (one Redis stream every process reads), both on ioredis, as their docs show.

const http = require('node:http');
const common = require('./common');

const { Server } = common.requireDep('socket.io');

const USAGE =
  'usage: node socketio-server.js [--host 127.0.0.1] [--port 0] [--adapter none|redis|redis-streams] [--redis redis://127.0.0.1:6379]';
const opts = common.parseArgs(process.argv.slice(2), USAGE, {
  adapter: 'none',
  redis: 'redis://127.0.0.1:6379',
});
if (!['none', 'redis', 'redis-streams'].includes(opts.adapter)) {
  common.die(`--adapter must be none, redis or redis-streams, got '${opts.adapter}'\n${USAGE}`, 2);
}

// `redis_errors`: connection errors the Redis clients reported (a Redis restart
// shows here); they reconnect by themselves.
const counters = { published: 0, delivered: 0, redis_errors: 0 };
const redisClients = [];
let ready = false;

// The adapter's Redis clients: ioredis reconnects and resubscribes on its own.
function redisAdapter() {
  if (opts.adapter === 'none') return undefined;
  const { Redis } = common.requireDep('ioredis');
  const client = (c) => {
    c.on('error', (err) => {
      counters.redis_errors++;
      // Before the first connection, an error is a wrong address, not a restart.
      if (!ready) common.die(`cannot reach Redis at ${opts.redis}: ${err.message}`);
    });
    redisClients.push(c);
    return c;
  };
  const pub = client(new Redis(opts.redis));
  if (opts.adapter === 'redis') {
    const { createAdapter } = common.requireDep('@socket.io/redis-adapter');
    return createAdapter(pub, client(pub.duplicate()));
  }
  const { createAdapter } = common.requireDep('@socket.io/redis-streams-adapter');
  return createAdapter(pub);
}

// A broadcast to a room is encoded once by socket.io's adapter and the same
// frame written to every member, so no hand optimisation is needed here. With a
// Redis adapter, `delivered` counts this process's members only.
function publish(topic, data) {
  const room = io.sockets.adapter.rooms.get(topic);
  const size = room ? room.size : 0;
  counters.published++;
  counters.delivered += size;
  // Other processes may have members: with an adapter, always broadcast.
  if (size > 0 || opts.adapter !== 'none') io.to(topic).emit('msg', { topic, data });
  return size;
}

const isTopic = (t) => typeof t === 'string' && t !== '';
const ackIfAsked = (ack, value) => {
  if (typeof ack === 'function') ack(value);
};

// socket.io routes its own path (/socket.io/) and hands every other request
// to the listeners already on the server, i.e. to these routes.
const server = http.createServer(
  common.httpHandler({
    stats: () => ({ connections: io.engine.clientsCount, ...counters }),
    publish,
  }),
);

const io = new Server(server, {
  transports: ['websocket'], // no long-polling: compare WebSocket against WebSocket
  perMessageDeflate: false,
  httpCompression: false,
  maxHttpBufferSize: common.MAX_MESSAGE_BYTES,
  serveClient: false, // the client bundle is not installed, and not needed
  adapter: redisAdapter(),
});

io.on('connection', (socket) => {
  socket.on('sub', (topic, ack) => {
    if (!isTopic(topic)) return ackIfAsked(ack, false);
    socket.join(topic);
    ackIfAsked(ack, true);
  });

  socket.on('unsub', (topic, ack) => {
    if (!isTopic(topic)) return ackIfAsked(ack, false);
    socket.leave(topic);
    ackIfAsked(ack, true);
  });

  socket.on('pub', (payload, ack) => {
    if (payload === null || typeof payload !== 'object' || !isTopic(payload.topic)) {
      return ackIfAsked(ack, { error: 'bad_request', message: 'pub needs {topic, data} with a non-empty topic' });
    }
    const data = payload.data === undefined ? null : payload.data;
    ackIfAsked(ack, { delivered: publish(payload.topic, data) });
  });
  // Rooms are left automatically on disconnect; nothing to clean up.
});

// With an adapter, ready once Redis answers: a publish before that would be queued.
Promise.all(redisClients.map((c) => c.ping())).then(
  () => {
    ready = true;
    common.listen(server, opts);
  },
  (err) => common.die(`cannot reach Redis at ${opts.redis}: ${err.message}`),
);

// io.close() disconnects every client and closes the http server too.
common.onShutdown(async () => {
  await new Promise((resolve) => io.close(() => resolve()));
  await Promise.all(redisClients.map((c) => c.quit().catch(() => {})));
});
