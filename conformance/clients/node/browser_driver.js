// Line-protocol driver run inside a browser page of the server's origin
// (Chromium through chromedp, Firefox through firefox.js): it defines
// window.__fanoutDriver.handle(cmd), which answers one command of
// conformance/clients/doc.go with the browser's own WebSocket. msgpack is
// @msgpack/msgpack's browser bundle, injected before this script as
// window.MessagePack. Browsers cannot send a fragmented message, so
// "fragments" is not supported here.
(function () {
  'use strict';
  const TIMEOUT = 60000;
  let ws = null;
  let enc = 'json';
  let nextId = 0;
  let conn = null;

  function newConn() {
    const c = { inbox: [], pending: [], wake: null, closed: null };
    c.push = (m) => { c.inbox.push(m); if (c.wake) c.wake(); };
    return c;
  }

  async function next(c) {
    const deadline = Date.now() + TIMEOUT;
    while (c.inbox.length === 0) {
      if (Date.now() > deadline) throw new Error('nothing received within ' + TIMEOUT + ' ms');
      await new Promise((resolve) => { c.wake = resolve; setTimeout(resolve, 1000); });
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

  function send(msg) {
    ws.send(enc === 'msgpack' ? window.MessagePack.encode(msg) : JSON.stringify(msg));
  }

  async function request(op, fields) {
    const id = ++nextId;
    send(Object.assign({ op, id }, fields));
    const r = await wait((m) => m.push === undefined && m.id === id);
    if (r.error) return { error: JSON.stringify(r.error) };
    return { offset: r.offset || 0 };
  }

  async function sha256hex(s) {
    const d = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(s));
    return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  async function handle(cmd) {
    switch (cmd.cmd) {
      case 'version':
        return { client: 'browser', version: navigator.userAgent };
      case 'connect': {
        if (ws) ws.close();
        if (cmd.encoding === 'msgpack' && !window.MessagePack) return { error: 'no msgpack codec injected' };
        enc = cmd.encoding;
        nextId = 0;
        const c = (conn = newConn());
        ws = new WebSocket(cmd.url, ['fanout.v1.' + enc]);
        ws.binaryType = 'arraybuffer';
        ws.onmessage = (e) => {
          try {
            c.push(typeof e.data === 'string' ? JSON.parse(e.data) : window.MessagePack.decode(new Uint8Array(e.data)));
          } catch (err) {
            c.push({ closed: { code: -1, raised: 'undecodable message: ' + err } });
          }
        };
        let raised = '';
        ws.onerror = () => { raised = 'error event'; };
        ws.onclose = (e) => c.push({ closed: { code: e.code, reason: e.reason, raised } });
        const opened = await new Promise((resolve) => {
          ws.addEventListener('open', () => resolve(true));
          ws.addEventListener('close', () => resolve(false));
        });
        if (!opened) return { error: 'connect failed: ' + raised };
        const m = await wait((m) => m.push === 'connected');
        return { protocol: ws.protocol, extensions: ws.extensions, client: m.client };
      }
      case 'subscribe':
        return request('subscribe', { channel: cmd.channel });
      case 'publish':
        if (cmd.fragments > 1) return { error: 'a browser cannot send a fragmented message' };
        return request('publish', { channel: cmd.channel, data: cmd.data });
      case 'recv': {
        const m = await wait((m) => m.push === 'pub' && m.channel === cmd.channel);
        const r = { offset: m.offset, type: typeof m.data, publisher: m.info && m.info.client };
        if (typeof m.data === 'string') {
          r.len = new TextEncoder().encode(m.data).length;
          r.sha256 = await sha256hex(m.data);
        }
        return r;
      }
      case 'send':
        send({ op: 'publish', id: 999999, channel: cmd.channel, data: cmd.data });
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

  window.__fanoutDriver = {
    // handle answers with a JSON string, so that every driver (CDP, BiDi)
    // carries the answer the same way.
    handle: async (cmd) => {
      try {
        return JSON.stringify(await handle(cmd));
      } catch (e) {
        return JSON.stringify({ error: String(e && e.stack || e) });
      }
    },
  };
})();
