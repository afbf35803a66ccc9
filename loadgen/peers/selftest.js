#!/usr/bin/env node
'use strict';
// Self-test for the two peer servers: starts each on port 0 as the harness
// does and drives it with real WebSocket clients. socket.io is spoken as raw
// engine.io v4 / socket.io v5 packets over a `ws` client, so the test needs
// no socket.io-client and also pins down the wire format the harness uses.
//
// Prints one line per check and a closing `N passed, N failed`; exits 0 only
// if every check passed.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const assert = require('node:assert/strict');
const { requireDep } = require('./common');

const WebSocket = requireDep('ws');

const TIMEOUT_MS = 5000;
const HERE = __dirname;
const ONE_MIB = 1024 * 1024;

let passed = 0;
let failed = 0;

// ---------------------------------------------------------------- helpers

function withTimeout(promise, what, ms = TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// A started server: its address, and a stop() that checks it exits cleanly
// and printed nothing on stdout beyond the single readiness line.
async function startServer(file) {
  const child = spawn(process.execPath, [path.join(HERE, file), '--port', '0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (s) => (stdout += s));
  child.stderr.setEncoding('utf8').on('data', (s) => (stderr += s));
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));

  const ready = new Promise((resolve, reject) => {
    const check = () => {
      if (stdout.includes('\n')) resolve();
    };
    child.stdout.on('data', check);
    exited.then(({ code, signal }) =>
      reject(new Error(`${file} exited (code ${code}, signal ${signal}) before ready; stderr: ${stderr.trim()}`)),
    );
  });
  try {
    await withTimeout(ready, `${file} to print its listening line`);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  const line = stdout.split('\n')[0];
  const m = /^listening 127\.0\.0\.1:(\d+)$/.exec(line);
  if (!m) {
    child.kill('SIGKILL');
    throw new Error(`${file}: first stdout line is ${JSON.stringify(line)}, want "listening 127.0.0.1:<port>"`);
  }
  const port = Number(m[1]);
  assert.ok(port > 0, 'port must be nonzero');

  return {
    port,
    async stop() {
      child.kill('SIGTERM');
      const { code, signal } = await withTimeout(exited, `${file} to exit after SIGTERM`);
      assert.equal(signal, null, `${file} died of ${signal} instead of exiting`);
      assert.equal(code, 0, `${file} exit code after SIGTERM; stderr: ${stderr.trim()}`);
      assert.equal(stdout, `${line}\n`, `${file} must print exactly one line on stdout`);
    },
    kill() {
      child.kill('SIGKILL');
    },
  };
}

function request(port, method, urlPath, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          return reject(new Error(`${method} ${urlPath}: response is not JSON: ${text.slice(0, 200)}`));
        }
        resolve({ status: res.statusCode, type: res.headers['content-type'], json });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

const getStats = async (port) => {
  const res = await request(port, 'GET', '/stats');
  assert.equal(res.status, 200, 'GET /stats status');
  assert.match(res.type, /application\/json/);
  return res.json;
};

// Messages waiting to be claimed, and waiters for messages not yet here.
// take() claims the first message that matches; idle() asserts none is left.
class Inbox {
  constructor(name) {
    this.name = name;
    this.items = [];
    this.waiters = [];
  }
  push(item) {
    const i = this.waiters.findIndex((w) => w.match(item));
    if (i === -1) return this.items.push(item);
    this.waiters.splice(i, 1)[0].resolve(item);
  }
  take(match, what) {
    const i = this.items.findIndex(match);
    if (i !== -1) return Promise.resolve(this.items.splice(i, 1)[0]);
    return withTimeout(
      new Promise((resolve) => this.waiters.push({ match, resolve })),
      `${what} on ${this.name}`,
    );
  }
  idle(what) {
    assert.deepEqual(this.items, [], `${this.name}: unexpected ${what}`);
  }
}

// ------------------------------------------------------- ws-server client

class JsonClient {
  static async open(port, name) {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { perMessageDeflate: false, maxPayload: 4 * ONE_MIB });
    const client = new JsonClient(ws, name);
    await withTimeout(
      new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
      }),
      `${name} to connect`,
    );
    return client;
  }
  constructor(ws, name) {
    this.ws = ws;
    this.inbox = new Inbox(name);
    this.nextId = 1;
    ws.on('message', (data, isBinary) => {
      assert.equal(isBinary, false, `${name} got a binary frame`);
      this.inbox.push(JSON.parse(data.toString('utf8')));
    });
  }
  sendRaw(text) {
    this.ws.send(text);
  }
  // Sends a request with a fresh id and resolves with its reply.
  request(body) {
    const id = this.nextId++;
    this.ws.send(JSON.stringify({ id, ...body }));
    return this.inbox.take((m) => m.id === id && (m.op === 'ok' || m.op === 'error'), `reply to ${body.op} #${id}`);
  }
  async ok(body) {
    const reply = await this.request(body);
    assert.deepEqual(reply, { op: 'ok', id: reply.id }, `reply to ${JSON.stringify(body).slice(0, 80)}`);
  }
  msg(topic) {
    return this.inbox.take((m) => m.op === 'msg' && m.topic === topic, `msg on ${topic}`);
  }
  // The server answers in order on one connection, so once a ping's reply is
  // back, any msg it had sent this client before is already in the inbox.
  async settle() {
    await this.ok({ op: 'ping' });
  }
  close() {
    this.ws.close();
  }
}

async function testWsServer(check) {
  const server = await startServer('ws-server.js');
  const { port } = server;
  const clients = [];
  try {
    let a, b, c;
    await check('ws: three clients connect to /ws', async () => {
      [a, b, c] = await Promise.all(['a', 'b', 'c'].map((n) => JsonClient.open(port, n)));
      clients.push(a, b, c);
    });

    await check('ws: sub and ping reply {"op":"ok","id":N}', async () => {
      await a.ok({ op: 'sub', topic: 't/a' });
      await b.ok({ op: 'sub', topic: 't/a' });
      await c.ok({ op: 'sub', topic: 't/b' });
      await c.ok({ op: 'ping' });
    });

    await check('ws: pub reaches exactly the subscribers of its topic', async () => {
      await c.ok({ op: 'pub', topic: 't/a', data: { x: 1, s: 'é' } });
      for (const sub of [a, b]) {
        assert.deepEqual(await sub.msg('t/a'), { op: 'msg', topic: 't/a', data: { x: 1, s: 'é' } });
      }
      for (const cl of [a, b, c]) await cl.settle();
      for (const cl of [a, b, c]) cl.inbox.idle('message after one pub');
    });

    await check('ws: topics match exactly (no prefix or wildcard match)', async () => {
      await c.ok({ op: 'pub', topic: 't', data: 1 });
      await c.ok({ op: 'pub', topic: 't/a/x', data: 2 });
      await c.ok({ op: 'pub', topic: 't/#', data: 3 });
      for (const cl of [a, b, c]) await cl.settle();
      for (const cl of [a, b, c]) cl.inbox.idle('message for another topic');
    });

    await check('ws: pub without id gets no reply; absent data arrives as null', async () => {
      c.sendRaw(JSON.stringify({ op: 'pub', topic: 't/a' }));
      assert.deepEqual(await a.msg('t/a'), { op: 'msg', topic: 't/a', data: null });
      await b.msg('t/a');
      await c.settle();
      c.inbox.idle('reply to a pub without id');
    });

    await check('ws: the publisher gets its own message when subscribed', async () => {
      await a.ok({ op: 'pub', topic: 't/a', data: 'self' });
      assert.equal((await a.msg('t/a')).data, 'self');
      await b.msg('t/a');
    });

    await check('ws: unsub stops delivery', async () => {
      await b.ok({ op: 'unsub', topic: 't/a' });
      await c.ok({ op: 'pub', topic: 't/a', data: 'after-unsub' });
      assert.equal((await a.msg('t/a')).data, 'after-unsub');
      await b.settle();
      b.inbox.idle('message after unsub');
    });

    await check('ws: bad JSON and unknown op get bad_request; the connection survives', async () => {
      a.sendRaw('{"op":"sub",');
      const e1 = await a.inbox.take((m) => m.op === 'error', 'error for bad JSON');
      assert.equal(e1.code, 'bad_request');
      assert.equal('id' in e1, false, 'no id when the request could not be parsed');
      assert.equal(typeof e1.message, 'string');
      const e2 = await a.request({ op: 'frobnicate' });
      assert.equal(e2.op, 'error');
      assert.equal(e2.code, 'bad_request');
      const e3 = await a.request({ op: 'sub' });
      assert.equal(e3.code, 'bad_request', 'sub without topic');
      await a.ok({ op: 'ping' });
      assert.equal(a.ws.readyState, WebSocket.OPEN);
    });

    await check('ws: a 1 MiB payload round trip', async () => {
      const big = 'x'.repeat(ONE_MIB - 7) + '"\\\u00e9\n'; // needs escaping, and non-ASCII
      await b.ok({ op: 'sub', topic: 'big' });
      await c.ok({ op: 'pub', topic: 'big', data: big });
      const got = await b.msg('big');
      assert.equal(got.data.length, big.length);
      assert.ok(got.data === big, '1 MiB payload changed in transit');
    });

    // So far: pubs 1 (t/a ->2) + 3 (other topics ->0) + 1 (->2) + 1 (->2) + 1 (->1) + 1 big (->1).
    await check('ws: GET /stats counts connections, published, delivered, dropped', async () => {
      assert.deepEqual(await getStats(port), { connections: 3, published: 8, delivered: 8, dropped: 0 });
    });

    await check('ws: POST /publish fans out and replies {"delivered":n}', async () => {
      const res = await request(port, 'POST', '/publish', JSON.stringify({ topic: 't/b', data: [1, 2] }));
      assert.equal(res.status, 200);
      assert.deepEqual(res.json, { delivered: 1 });
      assert.deepEqual(await c.msg('t/b'), { op: 'msg', topic: 't/b', data: [1, 2] });
      const none = await request(port, 'POST', '/publish', JSON.stringify({ topic: 'nobody', data: 0 }));
      assert.deepEqual(none.json, { delivered: 0 });
    });

    await check('ws: POST /publish with a bad body is a 400 JSON error', async () => {
      for (const body of ['{not json', '[]', '{"data":1}', '{"topic":5}']) {
        const res = await request(port, 'POST', '/publish', body);
        assert.equal(res.status, 400, `status for body ${body}`);
        assert.equal(res.json.error, 'bad_request');
      }
    });

    await check('ws: closing a connection drops its subscriptions', async () => {
      a.close();
      const deadline = Date.now() + TIMEOUT_MS;
      while ((await getStats(port)).connections !== 2) {
        if (Date.now() > deadline) throw new Error('connection count did not drop to 2');
        await new Promise((r) => setTimeout(r, 20));
      }
      const res = await request(port, 'POST', '/publish', JSON.stringify({ topic: 't/a', data: 0 }));
      assert.deepEqual(res.json, { delivered: 0 });
    });

    await check('ws: a subscriber that stops reading gets messages dropped, not buffered forever', async () => {
      const slow = await JsonClient.open(port, 'slow');
      clients.push(slow);
      await slow.ok({ op: 'sub', topic: 'flood' });
      slow.ws.pause(); // stop reading: the server's send buffer for it fills up
      const before = await getStats(port);
      const chunk = 'z'.repeat(ONE_MIB);
      const total = 64; // 64 MiB offered; the server may hold at most ~16 MiB + socket buffers
      for (let i = 0; i < total; i++) await c.ok({ op: 'pub', topic: 'flood', data: chunk });
      const after = await getStats(port);
      const dropped = after.dropped - before.dropped;
      const delivered = after.delivered - before.delivered;
      assert.ok(dropped > 0, 'nothing was dropped for a subscriber that does not read');
      assert.equal(dropped + delivered, total, 'every publish is either delivered or dropped');
      slow.ws.resume();
      for (let i = 0; i < delivered; i++) await slow.msg('flood');
      await slow.settle();
      slow.inbox.idle('message beyond those counted as delivered');
    });

    await check('ws: upgrades on other paths are refused', async () => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/not-ws`);
      await withTimeout(
        new Promise((resolve, reject) => {
          ws.once('open', () => reject(new Error('upgrade on /not-ws was accepted')));
          ws.once('error', resolve);
        }),
        'the refused upgrade',
      );
    });

    for (const cl of clients) cl.close();
    await check('ws: exits 0 on SIGTERM, one stdout line', () => server.stop());
  } finally {
    for (const cl of clients) cl.ws.terminate();
    server.kill();
  }
}

// ------------------------------------------------ socket.io raw client

// One engine.io v4 WebSocket carrying socket.io v5 packets on namespace "/":
// "4" = engine.io message, then "0" connect, "2" event, "3" ack.
class SioClient {
  static async open(port, name) {
    const url = `ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`;
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 4 * ONE_MIB });
    const client = new SioClient(ws, name);
    const open = await client.raw.take((p) => p[0] === '0', `${name} engine.io open packet`);
    client.handshake = JSON.parse(open.slice(1));
    ws.send('40');
    const connect = await client.raw.take((p) => p.startsWith('40'), `${name} socket.io connect`);
    client.sid = JSON.parse(connect.slice(2)).sid;
    return client;
  }
  constructor(ws, name) {
    this.ws = ws;
    this.name = name;
    this.raw = new Inbox(`${name} (raw)`);
    this.events = new Inbox(name);
    this.acks = new Inbox(`${name} (acks)`);
    this.nextAck = 0;
    ws.on('error', (err) => this.raw.push(`error ${err.message}`));
    ws.on('message', (data) => {
      const text = data.toString('utf8');
      if (text === '2') return ws.send('3'); // engine.io heartbeat
      const m = /^4([0-6])(\d*)([[{][\s\S]*)?$/.exec(text);
      if (m && m[1] === '2') return this.events.push(JSON.parse(m[3]));
      if (m && m[1] === '3') return this.acks.push({ id: Number(m[2]), args: JSON.parse(m[3]) });
      this.raw.push(text);
    });
  }
  emit(...args) {
    this.ws.send(`42${JSON.stringify(args)}`);
  }
  // Emits with an ack id; resolves with the ack's arguments.
  async call(...args) {
    const id = this.nextAck++;
    this.ws.send(`42${id}${JSON.stringify(args)}`);
    return (await this.acks.take((a) => a.id === id, `ack #${id} for ${args[0]}`)).args;
  }
  msg(topic) {
    return this.events.take((e) => e[0] === 'msg' && e[1] && e[1].topic === topic, `msg on ${topic}`);
  }
  // Acks come back in order after anything emitted to this client earlier.
  async settle() {
    assert.deepEqual(await this.call('unsub', '__settle__'), [true]);
  }
  close() {
    this.ws.close();
  }
}

async function testSocketIoServer(check) {
  const server = await startServer('socketio-server.js');
  const { port } = server;
  const clients = [];
  try {
    let a, b, c;
    await check('socket.io: engine.io v4 handshake over a raw WebSocket', async () => {
      [a, b, c] = await Promise.all(['a', 'b', 'c'].map((n) => SioClient.open(port, n)));
      clients.push(a, b, c);
      assert.equal(typeof a.handshake.sid, 'string');
      assert.deepEqual(a.handshake.upgrades, [], 'no transport upgrades on websocket');
      assert.ok(a.handshake.maxPayload >= 2 * ONE_MIB, `maxPayload ${a.handshake.maxPayload} < 2 MiB`);
      assert.equal(typeof a.sid, 'string');
    });

    await check('socket.io: polling transport is refused', async () => {
      const res = await request(port, 'GET', '/socket.io/?EIO=4&transport=polling');
      assert.equal(res.status, 400);
    });

    await check('socket.io: sub is acked with true', async () => {
      assert.deepEqual(await a.call('sub', 't/a'), [true]);
      assert.deepEqual(await b.call('sub', 't/a'), [true]);
      assert.deepEqual(await c.call('sub', 't/b'), [true]);
    });

    await check('socket.io: pub reaches exactly the room; ack {delivered: room size}', async () => {
      assert.deepEqual(await c.call('pub', { topic: 't/a', data: { x: 1 } }), [{ delivered: 2 }]);
      for (const sub of [a, b]) assert.deepEqual(await sub.msg('t/a'), ['msg', { topic: 't/a', data: { x: 1 } }]);
      for (const cl of [a, b, c]) await cl.settle();
      for (const cl of [a, b, c]) cl.events.idle('event after one pub');
    });

    await check('socket.io: topics match exactly', async () => {
      assert.deepEqual(await c.call('pub', { topic: 't', data: 1 }), [{ delivered: 0 }]);
      assert.deepEqual(await c.call('pub', { topic: 't/a/x', data: 2 }), [{ delivered: 0 }]);
      for (const cl of [a, b, c]) await cl.settle();
      for (const cl of [a, b, c]) cl.events.idle('event for another topic');
    });

    await check('socket.io: pub without ack still fans out', async () => {
      c.emit('pub', { topic: 't/a', data: 'no-ack' });
      assert.deepEqual(await a.msg('t/a'), ['msg', { topic: 't/a', data: 'no-ack' }]);
      await b.msg('t/a');
    });

    await check('socket.io: unsub leaves the room', async () => {
      assert.deepEqual(await b.call('unsub', 't/a'), [true]);
      assert.deepEqual(await c.call('pub', { topic: 't/a', data: 'after' }), [{ delivered: 1 }]);
      await a.msg('t/a');
      await b.settle();
      b.events.idle('event after unsub');
    });

    await check('socket.io: a malformed pub is acked with an error', async () => {
      const [reply] = await a.call('pub', 'not-an-object');
      assert.equal(reply.error, 'bad_request');
      assert.deepEqual(await a.call('sub', 42), [false]);
      assert.equal(a.ws.readyState, WebSocket.OPEN);
    });

    await check('socket.io: a 1 MiB payload round trip', async () => {
      const big = 'y'.repeat(ONE_MIB - 7) + '"\\\u00e9\n';
      assert.deepEqual(await b.call('sub', 'big'), [true]);
      assert.deepEqual(await c.call('pub', { topic: 'big', data: big }), [{ delivered: 1 }]);
      const [, got] = await b.msg('big');
      assert.ok(got.data === big, '1 MiB payload changed in transit');
    });

    // pubs: t/a->2, t->0, t/a/x->0, no-ack->2, after->1, big->1 (the malformed one is not counted).
    await check('socket.io: GET /stats counts connections, published, delivered', async () => {
      assert.deepEqual(await getStats(port), { connections: 3, published: 6, delivered: 6 });
    });

    await check('socket.io: POST /publish fans out and replies {"delivered":n}', async () => {
      const res = await request(port, 'POST', '/publish', JSON.stringify({ topic: 't/b', data: 'http' }));
      assert.equal(res.status, 200);
      assert.deepEqual(res.json, { delivered: 1 });
      assert.deepEqual(await c.msg('t/b'), ['msg', { topic: 't/b', data: 'http' }]);
      const bad = await request(port, 'POST', '/publish', '{"topic":');
      assert.equal(bad.status, 400);
    });

    await check('socket.io: disconnecting leaves every room', async () => {
      a.close();
      const deadline = Date.now() + TIMEOUT_MS;
      while ((await getStats(port)).connections !== 2) {
        if (Date.now() > deadline) throw new Error('connection count did not drop to 2');
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.deepEqual(await c.call('pub', { topic: 't/a', data: 0 }), [{ delivered: 0 }]);
    });

    for (const cl of clients) cl.close();
    await check('socket.io: exits 0 on SIGTERM, one stdout line', () => server.stop());
  } finally {
    for (const cl of clients) cl.ws.terminate();
    server.kill();
  }
}

// A checkout without `npm ci` must fail with instructions, not a stack trace.
async function testMissingDependency(check) {
  await check('both: a missing dependency fails with an npm ci hint', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peers-nodeps-'));
    try {
      for (const f of ['common.js', 'ws-server.js', 'socketio-server.js']) {
        fs.copyFileSync(path.join(HERE, f), path.join(dir, f));
      }
      for (const [file, dep] of [['ws-server.js', 'ws'], ['socketio-server.js', 'socket.io']]) {
        const child = spawn(process.execPath, [path.join(dir, file), '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (s) => (stdout += s));
        child.stderr.on('data', (s) => (stderr += s));
        const code = await withTimeout(new Promise((r) => child.on('exit', r)), `${file} to exit`);
        assert.notEqual(code, 0, `${file} exit code without ${dep}`);
        assert.equal(stdout, '', `${file} printed on stdout without ${dep}`);
        assert.ok(
          stderr.includes(`cannot find module '${dep}': run npm ci --prefix loadgen/peers`),
          `${file} stderr: ${stderr.trim()}`,
        );
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

// ------------------------------------------------------------------- main

async function main() {
  // A failed check stops the rest of its group, whose state it would leave
  // unknown, but not the other groups.
  const group = async (fn) => {
    try {
      await fn(async (name, body) => {
        try {
          await body();
          passed++;
          process.stdout.write(`ok   ${name}\n`);
        } catch (err) {
          failed++;
          process.stdout.write(`FAIL ${name}\n     ${String(err && err.message).split('\n').join('\n     ')}\n`);
          throw Object.assign(err, { reported: true });
        }
      });
    } catch (err) {
      if (!err.reported) {
        failed++;
        process.stdout.write(`FAIL ${err && err.message}\n`);
      }
    }
  };
  await group(testWsServer);
  await group(testSocketIoServer);
  await group(testMissingDependency);
  process.stdout.write(`${passed} passed, ${failed} failed\n`);
  process.exitCode = failed === 0 ? 0 : 1;
}

main().catch((err) => {
  process.stderr.write(`selftest crashed: ${err && err.stack}\n`);
  process.exitCode = 1;
});
