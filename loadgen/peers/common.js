'use strict';
// Plumbing shared by the two peer servers: command line, dependency loading,
// the one-line readiness announcement, small HTTP helpers and clean shutdown.
// Kept out of the servers so each of those reads as just its protocol.

const path = require('node:path');

const MIB = 1024 * 1024;

// Room for a 1 MiB payload plus its JSON envelope (and escaping slack).
const MAX_MESSAGE_BYTES = 2 * MIB;

function die(message, code = 1) {
  process.stderr.write(`${path.basename(process.argv[1] || 'peer')}: ${message}\n`);
  process.exit(code);
}

// Accepts `--port N`, `--port=N`, `--host H`, `--host=H`, and the string options a
// server names in `extra` (name → default); anything else is a usage error so a typo
// in the harness fails loudly instead of being ignored.
function parseArgs(argv, usage, extra = {}) {
  const opts = { host: '127.0.0.1', port: 0, ...extra };
  const known = (arg) => arg === '--port' || arg === '--host' || Object.hasOwn(extra, arg.slice(2));
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq !== -1) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg === '-h' || arg === '--help') {
      process.stdout.write(`${usage}\n`);
      process.exit(0);
    }
    if (!arg.startsWith('--') || !known(arg)) die(`unknown argument '${argv[i]}'\n${usage}`, 2);
    if (value === undefined) {
      if (i + 1 >= argv.length) die(`${arg} needs a value\n${usage}`, 2);
      value = argv[++i];
    }
    if (arg === '--port') {
      const port = Number(value);
      if (!/^\d+$/.test(value) || port > 65535) die(`--port must be 0..65535, got '${value}'`, 2);
      opts.port = port;
    } else {
      if (value === '') die(`${arg} must not be empty`, 2);
      opts[arg.slice(2)] = value;
    }
  }
  return opts;
}

// A missing node_modules is the usual first-run failure: say how to fix it
// instead of printing Node's stack trace.
function requireDep(name) {
  try {
    return require(name);
  } catch (err) {
    if (err && err.code === 'MODULE_NOT_FOUND' && String(err.message).includes(`'${name}'`)) {
      die(`cannot find module '${name}': run npm ci --prefix loadgen/peers`);
    }
    throw err;
  }
}

// Listen, then print exactly one `listening HOST:PORT` line. On Linux writes
// to a pipe or file are synchronous, so the line is out before we return.
function listen(server, { host, port }, onReady) {
  server.once('error', (err) => die(`cannot listen on ${host}:${port}: ${err.message}`));
  server.listen(port, host, () => {
    const addr = server.address();
    const shown = addr.family === 'IPv6' || addr.family === 6 ? `[${addr.address}]` : addr.address;
    process.stdout.write(`listening ${shown}:${addr.port}\n`);
    if (onReady) onReady(addr);
  });
}

// Close gracefully on SIGTERM/SIGINT, but never hang: the harness expects the
// process gone promptly, so a stuck close is cut short after a second.
function onShutdown(close) {
  let closing = false;
  const stop = () => {
    if (closing) return;
    closing = true;
    setTimeout(() => process.exit(0), 1000).unref();
    Promise.resolve()
      .then(close)
      .then(
        () => process.exit(0),
        (err) => die(`error while shutting down: ${err && err.message}`),
      );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

// Reads a JSON request body of at most `limit` bytes. Resolves with
// { value } or { error: [status, message] } so callers need no try/catch.
function readJsonBody(req, limit = MAX_MESSAGE_BYTES) {
  return new Promise((resolve) => {
    const chunks = [];
    let size = 0;
    let tooBig = false;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) tooBig = true;
      else chunks.push(chunk);
    });
    req.on('error', () => resolve({ error: [400, 'request body could not be read'] }));
    req.on('end', () => {
      if (tooBig) return resolve({ error: [413, `body larger than ${limit} bytes`] });
      try {
        resolve({ value: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
      } catch (err) {
        resolve({ error: [400, `invalid JSON: ${err.message}`] });
      }
    });
  });
}

// Validates a POST /publish body; returns an error message or null.
function checkPublishBody(body) {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return 'body must be a JSON object';
  if (typeof body.topic !== 'string' || body.topic === '') return '"topic" must be a non-empty string';
  return null;
}

// Shared HTTP routes: GET /stats and POST /publish. `publish(topic, data)`
// returns the number of connections the message went to.
function httpHandler({ stats, publish }) {
  return async (req, res) => {
    const url = (req.url || '/').split('?')[0];
    if (url === '/stats') {
      if (req.method !== 'GET') return sendJson(res, 405, { error: 'method_not_allowed' });
      return sendJson(res, 200, stats());
    }
    if (url === '/publish') {
      if (req.method !== 'POST') return sendJson(res, 405, { error: 'method_not_allowed' });
      const { value, error } = await readJsonBody(req);
      if (error) return sendJson(res, error[0], { error: 'bad_request', message: error[1] });
      const problem = checkPublishBody(value);
      if (problem) return sendJson(res, 400, { error: 'bad_request', message: problem });
      const data = value.data === undefined ? null : value.data;
      return sendJson(res, 200, { delivered: publish(value.topic, data) });
    }
    return sendJson(res, 404, { error: 'not_found' });
  };
}

module.exports = {
  MIB,
  MAX_MESSAGE_BYTES,
  die,
  parseArgs,
  requireDep,
  listen,
  onShutdown,
  sendJson,
  httpHandler,
};
