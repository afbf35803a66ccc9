#!/usr/bin/env node
'use strict';
// Benchmark peer: the idiomatic socket.io v4 pub/sub server. Topics are rooms;
// `sub`/`unsub` join and leave, `pub` emits `msg` to the room. See README.md.

const http = require('node:http');
const common = require('./common');

const { Server } = common.requireDep('socket.io');

const USAGE = 'usage: node socketio-server.js [--host 127.0.0.1] [--port 0]';
const opts = common.parseArgs(process.argv.slice(2), USAGE);

const counters = { published: 0, delivered: 0 };

// A broadcast to a room is encoded once by socket.io's adapter and the same
// frame written to every member, so no hand optimisation is needed here.
function publish(topic, data) {
  const room = io.sockets.adapter.rooms.get(topic);
  const size = room ? room.size : 0;
  counters.published++;
  counters.delivered += size;
  if (size > 0) io.to(topic).emit('msg', { topic, data });
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

common.listen(server, opts);

// io.close() disconnects every client and closes the http server too.
common.onShutdown(() => new Promise((resolve) => io.close(() => resolve())));
