// Line-protocol driver for npm ws (conformance/clients/doc.go).
//
//   node ws_driver.js plain     ws with perMessageDeflate: false
//   node ws_driver.js deflate   ws with perMessageDeflate: true (offers it)
//
// One JSON command per line on stdin, one JSON answer per line on stdout.
// Encodings: JSON, and msgpack with @msgpack/msgpack.
'use strict';

const crypto = require('crypto');
const readline = require('readline');
const WebSocket = require('ws');
const msgpack = require('@msgpack/msgpack');

const TIMEOUT = 60000;
const deflate = process.argv[2] === 'deflate';

let ws = null;
let enc = 'json';
let nextId = 0;
let conn = null; // {inbox: [], waiters: [], closed: null}

function newConn() {
  const c = { inbox: [], pending: [], wake: null, closed: null };
  c.push = (m) => { c.inbox.push(m); if (c.wake) c.wake(); };
  return c;
}

// next returns the next message or close of c, waiting up to TIMEOUT.
async function next(c) {
  const deadline = Date.now() + TIMEOUT;
  while (c.inbox.length === 0) {
    if (Date.now() > deadline) throw new Error('nothing received within ' + TIMEOUT + ' ms');
    await new Promise((resolve) => {
      c.wake = resolve;
      setTimeout(resolve, 1000);
    });
    c.wake = null;
  }
  return c.inbox.shift();
}

async function wait(match) {
  const c = conn;
  const i = c.pending.findIndex(match);
  if (i >= 0) return c.pending.splice(i, 1)[0];
  for (;;) {
    if (c.closed) throw new Error('connection closed while waiting: ' + JSON.stringify(c.closed));
    const m = await next(c);
    if (m.closed) { c.closed = m.closed; continue; }
    if (match(m)) return m;
    c.pending.push(m);
  }
}

function encode(msg) {
  return enc === 'msgpack' ? Buffer.from(msgpack.encode(msg)) : JSON.stringify(msg);
}

function sendRaw(data, fragments) {
  const binary = enc === 'msgpack';
  if (!(fragments > 1)) {
    return new Promise((resolve, reject) => ws.send(data, { binary }, (e) => (e ? reject(e) : resolve())));
  }
  // ws sends a message in fragments with fin:false on all but the last.
  const buf = Buffer.from(data);
  const step = Math.ceil(buf.length / fragments);
  const sends = [];
  for (let off = 0; off < buf.length; off += step) {
    const fin = off + step >= buf.length;
    sends.push(new Promise((resolve, reject) =>
      ws.send(buf.subarray(off, off + step), { binary, fin }, (e) => (e ? reject(e) : resolve()))));
  }
  return Promise.all(sends);
}

async function request(op, fields, fragments) {
  const id = ++nextId;
  await sendRaw(encode({ op, id, ...fields }), fragments);
  const r = await wait((m) => m.push === undefined && m.id === id);
  if (r.error) return { error: JSON.stringify(r.error) };
  return { offset: r.offset || 0 };
}

async function handle(cmd) {
  switch (cmd.cmd) {
    case 'version':
      return { client: deflate ? 'ws (perMessageDeflate)' : 'ws', version: require('ws/package.json').version, runtime: 'node ' + process.version };
    case 'connect': {
      if (ws) ws.terminate();
      enc = cmd.encoding;
      nextId = 0;
      const c = (conn = newConn());
      let extensions = '';
      ws = new WebSocket(cmd.url, ['fanout.v1.' + enc], { perMessageDeflate: deflate, maxPayload: 4 << 20, handshakeTimeout: TIMEOUT });
      ws.on('upgrade', (res) => { extensions = res.headers['sec-websocket-extensions'] || ''; });
      ws.on('message', (data, isBinary) => {
        try {
          c.push(isBinary ? msgpack.decode(data) : JSON.parse(data.toString('utf8')));
        } catch (e) {
          c.push({ closed: { code: -1, raised: 'undecodable message: ' + e } });
        }
      });
      let raised = '';
      ws.on('error', (e) => { raised = String(e); });
      ws.on('close', (code, reason) => c.push({ closed: { code, reason: reason.toString('utf8'), raised } }));
      await new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('close', () => reject(new Error('connect failed: ' + raised)));
      });
      const m = await wait((m) => m.push === 'connected');
      return { protocol: ws.protocol, extensions, client: m.client };
    }
    case 'subscribe':
      return request('subscribe', { channel: cmd.channel }, 0);
    case 'publish':
      return request('publish', { channel: cmd.channel, data: cmd.data }, cmd.fragments);
    case 'recv': {
      const m = await wait((m) => m.push === 'pub' && m.channel === cmd.channel);
      const r = { offset: m.offset, type: typeof m.data, publisher: m.info && m.info.client };
      if (typeof m.data === 'string') {
        const b = Buffer.from(m.data, 'utf8');
        r.len = b.length;
        r.sha256 = crypto.createHash('sha256').update(b).digest('hex');
      }
      return r;
    }
    case 'send':
      // The server answers with a close, not a reply.
      sendRaw(encode({ op: 'publish', id: 999999, channel: cmd.channel, data: cmd.data }), 0).catch((e) => process.stderr.write('send: ' + e + '\n'));
      return {};
    case 'wait_close': {
      const c = conn;
      while (!c.closed) {
        const m = await next(c);
        if (m.closed) c.closed = m.closed;
      }
      return c.closed;
    }
  }
  return { error: 'unknown command ' + cmd.cmd };
}

async function main() {
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.trim()) continue;
    let r;
    try {
      r = await handle(JSON.parse(line));
    } catch (e) {
      r = { error: String(e && e.stack || e) };
    }
    process.stdout.write(JSON.stringify(r) + '\n');
  }
  if (ws) ws.terminate();
}

main();
