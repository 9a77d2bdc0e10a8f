/*
 * fanout browser chat: one file, no frameworks, no build step, no external
 * resources. Two parts:
 *
 *   1. FanoutClient: the protocol/transport layer (PROTOCOL.md, fanout.v1.json):
 *      connect, reconnect with full-jitter exponential backoff (or the server's
 *      retry_after_ms on close 1012), command/reply matching by id, keepalive
 *      pings, subscriptions that recover gap-free after a reconnect and never
 *      deliver an offset twice, and authentication: a token (from getToken)
 *      sent with the connect op, never in the URL, and refreshed when the
 *      server pushes refresh.
 *   2. The chat UI, which only talks to FanoutClient, and a small view of
 *      the server's live stats (api/stats, polled while the page is shown).
 *
 * All user-provided text is rendered with textContent / createTextNode.
 */
'use strict';

(function (global) {
  // ---------------------------------------------------------------------------
  // Part 1: protocol / transport
  // ---------------------------------------------------------------------------

  const SUBPROTOCOL = 'fanout.v1.json';
  const CHANNEL_RE = /^[A-Za-z0-9_\-:./]{1,255}$/;

  /** validChannel reports whether name satisfies the protocol's channel rule. */
  function validChannel(name) {
    return typeof name === 'string' && CHANNEL_RE.test(name);
  }

  /** backoffDelay: full jitter, random(0, min(cap, base * 2^attempt)) in ms. */
  function backoffDelay(attempt, base = 500, cap = 30000, rnd = Math.random) {
    const ceiling = Math.min(cap, base * Math.pow(2, Math.min(attempt, 32)));
    return rnd() * ceiling;
  }

  /** retryAfterMs extracts N from a close reason containing retry_after_ms=N, else null. */
  function retryAfterMs(reason) {
    const m = /retry_after_ms=(\d+)/.exec(typeof reason === 'string' ? reason : '');
    if (!m) return null;
    const n = Number(m[1]);
    return Number.isFinite(n) ? n : null;
  }

  /** restartDelay: the server asked for N ms; wait N plus random(0, N/4). */
  function restartDelay(n, rnd = Math.random) {
    return n + rnd() * (n / 4);
  }

  class FanoutError extends Error {
    constructor(code, message) {
      super(message || code);
      this.name = 'FanoutError';
      this.code = code;
    }
  }

  /**
   * FanoutClient is a small, UI-free client for the fanout JSON protocol.
   *
   * Options for authentication (PROTOCOL.md "Authentication"):
   *   getToken     async () => token string, or null for an anonymous connect;
   *                when set, every connection starts with the connect op
   *                (the server keeps a browser without a token waiting for it)
   *                and a refresh push is answered with a fresh token.
   *   name         () => display name sent (unverified) by an anonymous
   *                connection with connect and subscribe.
   *
   * A close with a code of 4000-4999 (the server's backend disconnected this
   * user) stops reconnecting; connect() starts again.
   *
   * Events (client.on(type, fn)):
   *   state        {state: 'connecting'|'online'|'offline', retryAt, lastClose, attempt}
   *   connected    {client, user, name}           the server's connected push
   *   refreshed    {ok, error}                    a token refresh was answered
   *   disconnected {code, reason, wasClean}
   *   subscribed   {channel, epoch, offset, initial, recovering, recovered, epochChanged, reply}
   *   subscribe_error {channel, error, initial}
   *   pub          {channel, epoch, offset, data, info, source: 'live'|'recover'}
   *   gap          {channel, reason}              messages may have been missed
   *   join, leave  {channel, info: {client, user}}
   *   push         any other push
   */
  class FanoutClient {
    constructor(url, opts = {}) {
      this.url = url;
      this.protocol = opts.protocol || SUBPROTOCOL;
      this.baseDelay = opts.baseDelay ?? 500;
      this.capDelay = opts.capDelay ?? 30000;
      this.commandTimeout = opts.commandTimeout ?? 10000;
      this.pingInterval = opts.pingInterval ?? 25000;
      this.pingTimeout = opts.pingTimeout ?? 10000;
      this.connectTimeout = opts.connectTimeout ?? 10000;
      this.WebSocketImpl = opts.WebSocket || global.WebSocket;
      this.random = opts.random || Math.random;
      this.getToken = opts.getToken || null;
      this.name = opts.name || null;

      this.state = 'offline';
      this.ws = null;
      this.clientId = '';
      this.user = '';
      this.userName = ''; // the server's name for this connection (the token's, when it has one)
      this.sentName = ''; // the name this anonymous connection gave the server (connect or subscribe)
      this.refreshes = 0; // tokens refreshed on this client
      this.attempt = 0; // consecutive failed attempts; reset on a successful connect
      this.retryAt = 0; // epoch ms of the scheduled reconnect, 0 if none
      this.lastClose = null;

      this._nextId = 0;
      this._pending = new Map(); // id -> {resolve, reject, timer, op}
      this._subs = new Map(); // channel -> subscription record
      this._listeners = new Map();
      this._wantOpen = false;
      this._reconnectTimer = null;
      this._connectTimer = null;
      this._pingTimer = null;
      this._opening = 0; // generation of the token fetch in flight, 0 if none
      this._openGen = 0;
    }

    on(type, fn) {
      if (!this._listeners.has(type)) this._listeners.set(type, new Set());
      this._listeners.get(type).add(fn);
      return () => this._listeners.get(type).delete(fn);
    }

    _emit(type, detail) {
      const set = this._listeners.get(type);
      if (!set) return;
      for (const fn of [...set]) {
        try {
          fn(detail);
        } catch (err) {
          console.error('fanout: listener for', type, 'failed:', err);
        }
      }
    }

    _setState(state) {
      this.state = state;
      this._emit('state', {
        state,
        retryAt: this.retryAt,
        lastClose: this.lastClose,
        attempt: this.attempt,
      });
    }

    /** connect opens the connection (if not open) and keeps it open until close(). */
    connect() {
      this._wantOpen = true;
      if (this.ws || this._reconnectTimer || this._opening) return;
      this._open();
    }

    /** reconnectNow skips a pending backoff wait. */
    reconnectNow() {
      this._wantOpen = true;
      if (this.ws || this._opening) return;
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this._open();
    }

    /** close closes the connection and stops reconnecting. Subscriptions are kept. */
    close() {
      this._wantOpen = false;
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this._opening = 0; // a token fetch in flight is ignored when it lands
      if (this.ws) {
        this._drop(1000, 'client closed');
      } else {
        this.retryAt = 0;
        this._setState('offline');
      }
    }

    _open() {
      this.retryAt = 0;
      this._setState('connecting');
      if (!this.getToken) {
        this._openSocket(undefined);
        return;
      }
      // The token first (a fresh one for every connection), then the socket.
      const gen = ++this._openGen;
      this._opening = gen;
      Promise.resolve()
        .then(() => this.getToken())
        .then(
          (token) => {
            if (this._opening !== gen) return;
            this._opening = 0;
            if (this._wantOpen && !this.ws) this._openSocket(token == null ? null : String(token));
          },
          (err) => {
            if (this._opening !== gen) return;
            this._opening = 0;
            this._closed({ code: 4001, reason: 'no token: ' + ((err && err.message) || err), wasClean: false });
          }
        );
    }

    /** _openSocket opens the WebSocket; token is undefined without getToken, else the token or null (anonymous). */
    _openSocket(token) {
      let ws;
      try {
        ws = new this.WebSocketImpl(this.url, this.protocol);
      } catch (err) {
        this._closed({ code: 1006, reason: String((err && err.message) || err), wasClean: false });
        return;
      }
      this.ws = ws;
      this._connectId = 0;
      if (token !== undefined) {
        ws.onopen = () => {
          if (this.ws !== ws) return;
          // The connect op: the reply, then the connected push.
          const fields = { op: 'connect', id: ++this._nextId };
          if (token) fields.token = token;
          const name = this.name && this.name();
          if (!token && name) fields.name = name;
          this._connectId = fields.id;
          this._connectName = fields.name || '';
          try {
            ws.send(JSON.stringify(fields));
          } catch (_) {
            /* the close event follows */
          }
        };
      }
      ws.onmessage = (ev) => {
        if (this.ws === ws) this._onMessage(ev);
      };
      ws.onclose = (ev) => {
        if (this.ws === ws) this._closed(ev);
      };
      ws.onerror = () => {}; // a close event always follows
      this._connectTimer = setTimeout(() => {
        if (this.ws === ws && this.state !== 'online') this._drop(4000, 'connect timeout');
      }, this.connectTimeout);
    }

    /** _drop abandons the current socket at once (no waiting for a close handshake). */
    _drop(code, reason) {
      const ws = this.ws;
      if (!ws) return;
      ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(code, reason);
      } catch (_) {
        /* already closing */
      }
      this._closed({ code, reason, wasClean: false });
    }

    _closed(ev) {
      this.ws = null;
      this.sentName = '';
      clearTimeout(this._connectTimer);
      clearInterval(this._pingTimer);
      this._connectTimer = this._pingTimer = null;
      this.lastClose = { code: ev.code, reason: ev.reason || '', wasClean: !!ev.wasClean };

      const err = new FanoutError('closed', 'connection closed');
      const pending = [...this._pending.values()];
      this._pending.clear();
      for (const p of pending) {
        clearTimeout(p.timer);
        p.reject(err);
      }
      for (const sub of this._subs.values()) {
        sub.pending = false;
        sub.buffer = [];
        clearTimeout(sub.retryTimer);
      }
      this._emit('disconnected', this.lastClose);

      if (!this._wantOpen) {
        this.retryAt = 0;
        this._setState('offline');
        return;
      }
      if (ev.code >= 4000 && ev.code <= 4999 && ev.wasClean) {
        // The server's backend disconnected this user: do not come back
        // by ourselves (connect() or reconnectNow() does).
        this._wantOpen = false;
        this.retryAt = 0;
        this._setState('offline');
        return;
      }
      let delay;
      const n = ev.code === 1012 ? retryAfterMs(ev.reason) : null;
      if (n !== null) {
        delay = restartDelay(n, this.random);
      } else {
        delay = backoffDelay(this.attempt, this.baseDelay, this.capDelay, this.random);
        this.attempt++;
      }
      this.retryAt = Date.now() + delay;
      this._reconnectTimer = setTimeout(() => {
        this._reconnectTimer = null;
        if (this._wantOpen && !this.ws) this._open();
      }, delay);
      this._setState('offline');
    }

    _onMessage(ev) {
      if (typeof ev.data !== 'string') return; // JSON encoding: text frames only
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      if (!msg || typeof msg !== 'object' || Array.isArray(msg)) return;
      if (typeof msg.push === 'string') this._onPush(msg);
      else if (msg.id !== undefined) this._onReply(msg);
    }

    _onReply(msg) {
      if (this._connectId && msg.id === this._connectId) {
        this._connectId = 0;
        if (msg.error) {
          // Refused (a bad token, or no anonymous access): start over with a
          // new token after the usual backoff.
          this._drop(4001, 'connect refused: ' + String(msg.error.code || 'error'));
          return;
        }
        if (this._connectName) this.sentName = this._connectName;
        return; // success: the connected push follows
      }
      const p = this._pending.get(msg.id);
      if (!p) return; // timed out already
      this._pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) {
        const e = msg.error;
        p.reject(new FanoutError(String(e.code || 'error'), String(e.message || e.code || 'error')));
      } else {
        p.resolve(msg);
      }
    }

    _onPush(msg) {
      switch (msg.push) {
        case 'connected': {
          clearTimeout(this._connectTimer);
          this._connectTimer = null;
          this.clientId = typeof msg.client === 'string' ? msg.client : '';
          this.user = typeof msg.user === 'string' ? msg.user : '';
          this.userName = typeof msg.name === 'string' ? msg.name : '';
          this.attempt = 0;
          this.retryAt = 0;
          this._setState('online');
          clearInterval(this._pingTimer);
          this._pingTimer = setInterval(() => this._ping(), this.pingInterval);
          this._emit('connected', { client: this.clientId, user: this.user, name: this.userName });
          for (const sub of this._subs.values()) this._subscribe(sub);
          break;
        }
        case 'pub': {
          const sub = this._subs.get(msg.channel);
          if (!sub) return;
          if (sub.pending) sub.buffer.push(msg);
          else this._deliver(sub, msg, msg.epoch, 'live');
          break;
        }
        case 'refresh':
          this._refresh();
          break;
        case 'join':
        case 'leave':
          if (this._subs.has(msg.channel)) {
            this._emit(msg.push, { channel: msg.channel, info: msg.info || {} });
          }
          break;
        default:
          this._emit('push', msg);
      }
    }

    /** _refresh answers the refresh push: a fresh token for the same user. */
    _refresh() {
      if (!this.getToken || !this.user) return;
      const ws = this.ws;
      Promise.resolve()
        .then(() => this.getToken())
        .then((token) => {
          if (this.ws !== ws || !token) throw new FanoutError('closed', 'no token');
          return this.command('refresh', { token: String(token) });
        })
        .then(
          () => {
            this.refreshes++;
            this._emit('refreshed', { ok: true });
          },
          (err) => this._emit('refreshed', { ok: false, error: err })
        );
    }

    _ping() {
      this.command('ping', {}, { timeout: this.pingTimeout }).catch((err) => {
        if (err.code === 'timeout') this._drop(4000, 'ping timeout');
      });
    }

    /**
     * command sends {op, id, ...fields} and resolves with the reply, or rejects
     * with a FanoutError (the server's {code, message}, or 'offline', 'timeout',
     * 'closed').
     */
    command(op, fields = {}, opts = {}) {
      return new Promise((resolve, reject) => {
        const ws = this.ws;
        if (!ws || this.state !== 'online' || ws.readyState !== 1) {
          reject(new FanoutError('offline', 'not connected'));
          return;
        }
        const id = ++this._nextId;
        const timeout = opts.timeout ?? this.commandTimeout;
        const timer =
          timeout > 0
            ? setTimeout(() => {
                if (this._pending.delete(id)) reject(new FanoutError('timeout', op + ' timed out'));
              }, timeout)
            : null;
        this._pending.set(id, { resolve, reject, timer, op });
        try {
          ws.send(JSON.stringify(Object.assign({ op, id }, fields)));
        } catch (err) {
          this._pending.delete(id);
          clearTimeout(timer);
          reject(new FanoutError('closed', String((err && err.message) || err)));
        }
      });
    }

    publish(channel, data) {
      return this.command('publish', { channel, data }).then((r) => r.offset);
    }

    history(channel, limit) {
      const fields = { channel };
      if (limit) fields.limit = limit;
      return this.command('history', fields);
    }

    presence(channel) {
      return this.command('presence', { channel });
    }

    ping() {
      return this.command('ping');
    }

    /** position returns the last delivered {epoch, offset} of a channel, or null. */
    position(channel) {
      const sub = this._subs.get(channel);
      return sub && sub.epoch !== null ? { epoch: sub.epoch, offset: sub.offset } : null;
    }

    isSubscribed(channel) {
      const sub = this._subs.get(channel);
      return !!(sub && sub.active);
    }

    /**
     * subscribe registers a subscription that is (re)established on every
     * connect, recovering from the last delivered position. It resolves with
     * the first 'subscribed' detail, or rejects on the first error reply.
     */
    subscribe(channel, opts = {}) {
      if (!validChannel(channel)) {
        return Promise.reject(new FanoutError('bad_request', 'invalid channel name'));
      }
      const existing = this._subs.get(channel);
      if (existing) return existing.ready;
      const sub = {
        channel,
        presence: !!opts.presence,
        epoch: opts.recover ? opts.recover.epoch : null,
        offset: opts.recover ? opts.recover.offset : 0,
        pending: false, // a subscribe command is in flight
        active: false, // the server has confirmed it on this connection
        established: false, // confirmed at least once
        buffer: [], // pub pushes that arrived while the subscribe was in flight
        retries: 0,
        retryTimer: null,
        first: null,
        ready: null,
      };
      sub.ready = new Promise((resolve, reject) => {
        sub.first = { resolve, reject };
      });
      sub.ready.catch(() => {}); // the caller may not care
      this._subs.set(channel, sub);
      if (this.state === 'online') this._subscribe(sub);
      return sub.ready;
    }

    unsubscribe(channel) {
      const sub = this._subs.get(channel);
      if (!sub) return Promise.resolve();
      this._subs.delete(channel);
      clearTimeout(sub.retryTimer);
      if (sub.first) {
        sub.first.reject(new FanoutError('unsubscribed', 'unsubscribed'));
        sub.first = null;
      }
      if (this.state !== 'online') return Promise.resolve();
      return this.command('unsubscribe', { channel }).then(
        () => {},
        () => {}
      );
    }

    _subscribe(sub) {
      clearTimeout(sub.retryTimer);
      sub.pending = true;
      sub.active = false;
      sub.buffer = [];
      const fields = { channel: sub.channel };
      if (sub.presence) fields.presence = true;
      const name = !this.user && this.name && this.name();
      if (name) fields.name = name;
      const recovering = sub.epoch !== null;
      if (recovering) fields.recover = { epoch: sub.epoch, offset: sub.offset };

      this.command('subscribe', fields).then(
        (reply) => {
          if (fields.name) this.sentName = fields.name; // the server took it
          if (this._subs.get(sub.channel) !== sub) return; // unsubscribed meanwhile
          sub.pending = false;
          sub.active = true;
          sub.retries = 0;
          const buffered = sub.buffer;
          sub.buffer = [];
          const epoch = reply.epoch;
          const top = typeof reply.offset === 'number' ? reply.offset : 0;
          let recovered = false;
          let epochChanged = false;
          if (!recovering) {
            // Fresh subscription: everything up to top is history's business.
            sub.epoch = epoch;
            sub.offset = top;
          } else {
            recovered = reply.recovered === true;
            if (epoch !== sub.epoch) {
              epochChanged = true;
              recovered = false;
              sub.epoch = epoch;
              sub.offset = 0;
            }
            const pubs = Array.isArray(reply.publications) ? reply.publications : [];
            for (const p of pubs) this._deliver(sub, p, p.epoch ?? epoch, 'recover');
            if (top > sub.offset) sub.offset = top;
          }
          for (const m of buffered) this._deliver(sub, m, m.epoch, 'live');
          const initial = !sub.established;
          sub.established = true;
          const detail = {
            channel: sub.channel,
            epoch: sub.epoch,
            offset: sub.offset,
            initial,
            recovering,
            recovered,
            epochChanged,
            reply,
          };
          this._emit('subscribed', detail);
          if (sub.first) {
            sub.first.resolve(detail);
            sub.first = null;
          }
        },
        (err) => {
          if (this._subs.get(sub.channel) !== sub) return;
          sub.pending = false;
          sub.buffer = [];
          if (err.code === 'closed' || err.code === 'offline') return; // redone on reconnect
          if (err.code === 'timeout') {
            this._drop(4000, 'subscribe timeout'); // start over cleanly
            return;
          }
          if (!sub.established) this._subs.delete(sub.channel); // a failed first subscribe is dropped
          else if (err.code === 'rate_limited' || err.code === 'internal') {
            const delay = backoffDelay(sub.retries++, 1000, this.capDelay, this.random);
            sub.retryTimer = setTimeout(() => {
              if (this._subs.get(sub.channel) === sub && this.state === 'online' && !sub.active) {
                this._subscribe(sub);
              }
            }, delay);
          }
          this._emit('subscribe_error', { channel: sub.channel, error: err, initial: !sub.established });
          if (sub.first) {
            sub.first.reject(err);
            sub.first = null;
          }
        }
      );
    }

    /** _deliver emits a publication unless it is a duplicate or older than the last one delivered. */
    _deliver(sub, pub, epoch, source) {
      const off = pub.offset;
      if (typeof off !== 'number') return;
      if (epoch === undefined || epoch === null) epoch = sub.epoch;
      if (epoch !== sub.epoch) {
        // The channel's history was reset (new epoch): offsets restart.
        const known = sub.epoch !== null;
        sub.epoch = epoch;
        sub.offset = 0;
        if (known && source === 'live') this._emit('gap', { channel: sub.channel, reason: 'epoch' });
      }
      if (off <= sub.offset) return;
      if (source === 'live' && sub.established && off > sub.offset + 1) {
        this._emit('gap', { channel: sub.channel, reason: 'offset' });
      }
      sub.offset = off;
      this._emit('pub', {
        channel: sub.channel,
        epoch: sub.epoch,
        offset: off,
        data: pub.data,
        info: pub.info || {},
        source,
      });
    }
  }

  const api = { FanoutClient, FanoutError, validChannel, backoffDelay, retryAfterMs, restartDelay };
  if (typeof module === 'object' && module && module.exports) module.exports = api;
  global.FanoutClient = FanoutClient;

  // ---------------------------------------------------------------------------
  // Part 2: the chat UI
  // ---------------------------------------------------------------------------

  const ROOM_PREFIX = 'room:';
  const MAX_NAME = 32;
  const MAX_ROOM = 255 - ROOM_PREFIX.length;
  const HISTORY_LIMIT = 50;
  const MAX_RENDERED = 2000;
  const STORE_NAME = 'fanout.name';
  const STORE_ROOM = 'fanout.room';

  function startApp() {
    const $ = (id) => document.getElementById(id);
    const els = {
      status: $('status'),
      statusText: $('status-text'),
      retry: $('retry'),
      joinForm: $('join-form'),
      name: $('name'),
      room: $('room'),
      join: $('join'),
      joinError: $('join-error'),
      notice: $('notice'),
      noticeText: $('notice-text'),
      noticeClose: $('notice-close'),
      roomTitle: $('room-title'),
      roomChannel: $('room-channel'),
      scroller: $('scroller'),
      empty: $('empty'),
      messages: $('messages'),
      sendForm: $('send-form'),
      message: $('message'),
      send: $('send'),
      presence: $('presence'),
      presenceCount: $('presence-count'),
      errors: $('errors'),
      identity: $('identity'),
      stats: $('stats'),
      statsConnections: $('stats-connections'),
      statsRate: $('stats-rate'),
    };

    const store = {
      get(k) {
        try {
          return global.localStorage.getItem(k) || '';
        } catch (_) {
          return '';
        }
      },
      set(k, v) {
        try {
          global.localStorage.setItem(k, v);
        } catch (_) {
          /* storage unavailable */
        }
      },
    };

    const client = new FanoutClient(wsURL(), { name: () => app.name });

    const app = {
      name: '',
      room: '',
      channel: '',
      subscribed: false,
      historyLoaded: false, // a history reply for the current room arrived
      messages: [], // sorted by (epoch index, offset); dividers have offset 0
      seen: new Set(), // "epoch\0offset" of every rendered publication
      epochs: new Map(), // epoch -> index in order of first sight
      presence: new Map(), // client id -> user
      presenceBuffer: null, // join/leave seen while a presence snapshot is loading
      presenceToken: null,
      names: new Map(), // client id -> display name learned from its messages
      myIds: new Set(), // every client id this tab has had
      errors: [],
      notices: [],
      stats: null, // the last answer of api/stats
      joinPromise: null,
      countdown: null,
      // What /auth.json said: mode 'none' (no tokens), 'required' or
      // 'optional' (anonymous allowed); tokenURL and dev (it takes ?name=).
      auth: { mode: 'none', tokenURL: '', dev: false },
    };

    // ----- helpers -----

    function wsURL() {
      const loc = global.location;
      const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
      return scheme + '//' + loc.host + '/ws';
    }

    // ----- authentication -----

    /** loadAuth asks the server whether it wants a token, and where to get one. */
    function loadAuth() {
      if (typeof global.fetch !== 'function') return Promise.resolve();
      return global
        .fetch('auth.json', { cache: 'no-store' })
        .then((r) => (r.ok ? r.json() : null))
        .then(
          (j) => {
            if (!j || typeof j !== 'object') return;
            if (j.auth === 'required' || j.auth === 'optional') app.auth.mode = j.auth;
            if (typeof j.tokenURL === 'string') app.auth.tokenURL = j.tokenURL;
            app.auth.dev = j.dev === true;
          },
          () => {} // an older server: no tokens
        );
    }

    /**
     * getToken fetches a token for the next connection or refresh: a token
     * in the page's URL (?token=) is used as is (and sent with the connect
     * op, never in the WebSocket URL); else the server's token endpoint,
     * which with dev tokens takes the name. null: connect anonymously.
     */
    function getToken() {
      const pageToken = new URLSearchParams(global.location.search).get('token');
      if (pageToken) return Promise.resolve(pageToken);
      if (!app.auth.tokenURL) return Promise.resolve(null);
      let url = app.auth.tokenURL;
      if (app.auth.dev) {
        if (!app.name) return Promise.reject(new FanoutError('no_name', 'enter your name to sign in'));
        app.tokenName = app.name;
        url += (url.includes('?') ? '&' : '?') + 'name=' + encodeURIComponent(app.name);
      }
      return global
        .fetch(url, { credentials: 'same-origin', cache: 'no-store' })
        .then((r) => {
          if (!r.ok) throw new FanoutError('token', 'token endpoint answered ' + r.status);
          return r.json();
        })
        .then((j) => {
          if (!j || typeof j.token !== 'string' || !j.token) throw new FanoutError('token', 'token endpoint gave no token');
          return j.token;
        })
        .catch((err) => {
          if (app.auth.mode === 'optional') return null; // not signed in: anonymous
          throw err;
        });
    }

    /** identityFixed: the name comes from the token, not from the form. */
    function identityFixed() {
      return app.auth.mode !== 'none' && !app.auth.dev && !!client.user;
    }

    function renderIdentity() {
      if (!els.identity) return;
      if (client.user) {
        const shown = client.userName || client.user;
        els.identity.replaceChildren('Signed in as ', el('bdi', '', shown));
        if (shown !== client.user) els.identity.append(' (', el('bdi', '', client.user), ')');
        els.identity.hidden = false;
      } else {
        els.identity.textContent = '';
        els.identity.hidden = true;
      }
    }

    function el(tag, className, text) {
      const node = document.createElement(tag);
      if (className) node.className = className;
      if (text !== undefined) node.textContent = text;
      return node;
    }

    /**
     * shortId is the 8-character label of a client that gave no name. It is
     * the end of the id: where ids made of a shared prefix (a node, a
     * process) and a counter differ; the server's random ids differ
     * everywhere. The start would be the same for every client of a node.
     */
    function shortId(id) {
      return id.length > 8 ? id.slice(-8) : id;
    }

    /**
     * hue picks a colour (0-359) from a hash of the whole id (FNV-1a, then
     * murmur3's finaliser so that every input bit moves every output bit):
     * ids one character apart get unrelated colours.
     */
    function hue(s) {
      let h = 0x811c9dc5;
      for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
      h ^= h >>> 16;
      h = Math.imul(h, 0x85ebca6b);
      h ^= h >>> 13;
      h = Math.imul(h, 0xc2b2ae35);
      h ^= h >>> 16;
      return (h >>> 0) % 360;
    }

    /** initial: the first visible character of a name (not a bidi control or space), upper-cased. */
    function initial(name) {
      const ch = [...name].find((c) => !/[\p{C}\p{Z}]/u.test(c));
      return ch ? ch.toUpperCase() : '?';
    }

    function safeDate(ts) {
      const d = new Date(typeof ts === 'number' ? ts : NaN);
      return Number.isNaN(d.getTime()) ? new Date() : d;
    }

    function validateName(name) {
      const n = [...name].length;
      if (n === 0) return 'Please enter your name.';
      if (n > MAX_NAME) return 'Names can be at most ' + MAX_NAME + ' characters.';
      return '';
    }

    function validateRoom(room) {
      if (room.length === 0) return 'Please enter a room.';
      if (room.length > MAX_ROOM || !validChannel(ROOM_PREFIX + room)) {
        return (
          'Invalid room name: use 1–' +
          MAX_ROOM +
          ' characters of letters, digits and _ - : . / (no spaces).'
        );
      }
      return '';
    }

    function roomFromHash() {
      const raw = global.location.hash.replace(/^#/, '');
      if (!raw) return '';
      try {
        return decodeURIComponent(raw);
      } catch (_) {
        return raw;
      }
    }

    function setHash(room) {
      if (roomFromHash() === room) return;
      try {
        global.history.replaceState(null, '', '#' + room);
      } catch (_) {
        global.location.hash = room;
      }
    }

    // ----- status -----

    function renderStatus() {
      const state = client.state;
      document.body.dataset.state = state;
      els.status.dataset.state = state;
      let text;
      let waiting = false;
      if (state === 'online') {
        text = 'Online';
      } else if (state === 'connecting') {
        text = client.attempt > 0 ? 'Reconnecting…' : 'Connecting…';
      } else if (app.auth.dev && !app.name) {
        text = 'Enter your name to sign in';
      } else if (client.retryAt) {
        waiting = true;
        const secs = Math.max(0, Math.ceil((client.retryAt - Date.now()) / 1000));
        const lc = client.lastClose;
        const prefix = lc && lc.code === 1012 ? 'Server restarting' : 'Offline';
        text = prefix + ' — reconnecting in ' + secs + ' s';
      } else {
        text = 'Offline';
      }
      els.statusText.textContent = text;
      els.retry.hidden = !waiting;
      if (waiting && !app.countdown) {
        app.countdown = setInterval(renderStatus, 250);
      } else if (!waiting && app.countdown) {
        clearInterval(app.countdown);
        app.countdown = null;
      }
    }

    function updateControls() {
      const online = client.state === 'online';
      const canSend = online && app.subscribed && !!app.channel;
      els.message.disabled = !canSend;
      els.send.disabled = !canSend;
      if (!app.channel) els.message.placeholder = 'Join a room to chat';
      else if (!online) els.message.placeholder = 'Offline — waiting to reconnect…';
      else if (!app.subscribed) els.message.placeholder = 'Joining…';
      else els.message.placeholder = 'Message ' + app.room;
    }

    // ----- errors and notices -----

    function reportError(context, err) {
      const code = (err && err.code) || 'error';
      const message = (err && err.message) || String(err);
      app.errors.push({ context, code, message });
      if (app.errors.length > 50) app.errors.shift();
      const item = el('li', 'toast');
      item.append(el('strong', '', context + ' failed'), document.createTextNode(': ' + message + ' '));
      item.append(el('code', '', code));
      const close = el('button', 'icon-button', '×');
      close.type = 'button';
      close.setAttribute('aria-label', 'Dismiss error');
      close.addEventListener('click', () => item.remove());
      item.append(close);
      els.errors.append(item);
      while (els.errors.children.length > 5) els.errors.firstElementChild.remove();
      setTimeout(() => item.remove(), 8000);
    }

    function showNotice(text) {
      app.notices.push(text);
      els.noticeText.textContent = text;
      els.notice.hidden = false;
    }

    function showJoinError(text) {
      els.joinError.textContent = text;
      els.joinError.hidden = !text;
    }

    // ----- messages -----

    function epochIndex(epoch) {
      if (!app.epochs.has(epoch)) {
        const idx = app.epochs.size;
        app.epochs.set(epoch, idx);
        if (idx > 0) {
          // The channel's history restarted: mark where the new life begins.
          const li = el('li', 'divider', 'Channel history was reset');
          insertEntry({ ei: idx, offset: 0, divider: true, el: li });
        }
      }
      return app.epochs.get(epoch);
    }

    function nearBottom() {
      const s = els.scroller;
      return s.scrollHeight - s.scrollTop - s.clientHeight < 48;
    }

    function insertEntry(entry) {
      const list = app.messages;
      let i = list.length;
      while (i > 0 && (list[i - 1].ei > entry.ei || (list[i - 1].ei === entry.ei && list[i - 1].offset > entry.offset))) i--;
      const stick = nearBottom();
      els.messages.insertBefore(entry.el, i < list.length ? list[i].el : null);
      list.splice(i, 0, entry);
      while (list.length > MAX_RENDERED) list.shift().el.remove();
      els.empty.hidden = list.length > 0;
      if (stick) els.scroller.scrollTop = els.scroller.scrollHeight;
    }

    function learnName(clientId, name) {
      if (!clientId || !name || app.names.get(clientId) === name) return;
      app.names.set(clientId, name);
      if (app.presence.has(clientId)) renderPresence();
    }

    function addMessage(epoch, pub) {
      const offset = pub.offset;
      if (typeof offset !== 'number') return;
      const key = epoch + '\u0000' + offset;
      if (app.seen.has(key)) return; // never render an offset twice
      app.seen.add(key);

      const info = pub.info && typeof pub.info === 'object' ? pub.info : {};
      const clientId = typeof info.client === 'string' ? info.client : '';
      const user = typeof info.user === 'string' ? info.user : '';
      const data = pub.data;
      let name = '';
      let text;
      let ts;
      if (data && typeof data === 'object' && !Array.isArray(data)) {
        if (typeof data.name === 'string') name = [...data.name.trim()].slice(0, MAX_NAME).join('');
        if (typeof data.text === 'string') text = data.text;
        if (typeof data.ts === 'number') ts = data.ts;
      }
      if (text === undefined) text = typeof data === 'string' ? data : String(JSON.stringify(data));
      const infoName = typeof info.name === 'string' ? [...info.name].slice(0, MAX_NAME).join('') : '';
      let verified = false;
      if (user) {
        // Signed in: the server's name for the user, never what the message
        // claims.
        name = infoName || user;
        verified = true;
      } else if (!name) {
        name = infoName;
      }
      if (name && clientId && !user) learnName(clientId, name);
      if (!name) name = clientId ? shortId(clientId) : 'server';

      const when = safeDate(ts);
      const msg = { epoch, ei: epochIndex(epoch), offset, name, verified, user, text, client: clientId, ts: when.getTime(), el: null };

      const li = el('li', 'msg');
      if (clientId && app.myIds.has(clientId)) li.classList.add('mine');
      li.dataset.offset = String(offset);
      li.dataset.epoch = String(epoch);
      const meta = el('div', 'meta');
      // Names and texts are isolated (<bdi>, dir=auto, unicode-bidi:
      // isolate in style.css): a right-to-left override in them cannot
      // reorder what is around them.
      const author = el('bdi', 'author', name);
      author.style.setProperty('--hue', String(hue(clientId || name)));
      if (!verified && app.auth.mode !== 'none') {
        author.classList.add('unverified');
        author.title = 'Name not verified (not signed in)';
      } else if (verified) {
        author.title = user;
      }
      const time = el('time', 'time', when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }));
      time.dateTime = when.toISOString();
      time.title = when.toLocaleString();
      meta.append(author, time);
      const body = el('div', 'text', text);
      body.dir = 'auto';
      li.append(meta, body);
      msg.el = li;
      insertEntry(msg);
    }

    function loadHistory(channel) {
      client.history(channel, HISTORY_LIMIT).then(
        (r) => {
          if (app.channel !== channel) return;
          app.historyLoaded = true;
          const pubs = Array.isArray(r.publications) ? r.publications : [];
          for (const p of pubs) addMessage(p.epoch ?? r.epoch, p);
        },
        (err) => {
          if (app.channel === channel && err.code !== 'closed') reportError('history', err);
        }
      );
    }

    // ----- presence -----

    /** displayName: a signed-in user's name is the server's; others' are what they said. */
    function displayName(clientId, p) {
      if (p.user) return p.name || p.user;
      if (clientId === client.clientId && app.name) return app.name;
      // The name the client gave the server (it comes with presence, so it
      // is there after every reconnect), else one learned from its messages.
      return p.name || app.names.get(clientId) || shortId(clientId);
    }

    /** named: whether a presence entry has a name, not just its id's label. */
    function named(clientId, p) {
      return !!(p.user || p.name || app.names.has(clientId) || (clientId === client.clientId && app.name));
    }

    /** presenceEntry keeps what the server says of a client. */
    function presenceEntry(info) {
      return {
        user: typeof info.user === 'string' ? info.user : '',
        name: typeof info.name === 'string' ? [...info.name].slice(0, MAX_NAME).join('') : '',
      };
    }

    function renderPresence() {
      const me = client.clientId;
      const entries = [...app.presence.entries()].map(([id, p]) => ({ id, user: p.user, name: displayName(id, p), named: named(id, p) }));
      entries.sort((a, b) => (b.id === me) - (a.id === me) || a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
      const items = entries.map((e) => {
        const li = el('li', 'person');
        li.dataset.client = e.id;
        const avatar = el('span', 'avatar', initial(e.name));
        avatar.setAttribute('aria-hidden', 'true');
        avatar.style.setProperty('--hue', String(hue(e.id)));
        const label = el('bdi', 'person-name', e.name);
        li.append(avatar, label);
        if (e.id === me) li.append(el('span', 'you', '(you)'));
        else if (!e.named) label.classList.add('anon');
        if (!e.user && app.auth.mode !== 'none') {
          label.classList.add('unverified');
          label.title = 'Name not verified (not signed in)';
        }
        li.title = e.id;
        return li;
      });
      els.presence.replaceChildren(...items);
      els.presenceCount.textContent = String(entries.length);
    }

    function applyPresence(kind, info) {
      if (!info || typeof info.client !== 'string') return;
      if (app.presenceBuffer) app.presenceBuffer.push([kind, info]);
      if (kind === 'join') app.presence.set(info.client, presenceEntry(info));
      else app.presence.delete(info.client);
      renderPresence();
    }

    function loadPresence(channel) {
      const token = {};
      app.presenceToken = token;
      app.presenceBuffer = [];
      client.presence(channel).then(
        (r) => {
          if (app.channel !== channel || app.presenceToken !== token) return;
          const map = new Map();
          for (const c of Array.isArray(r.clients) ? r.clients : []) {
            if (c && typeof c.client === 'string') map.set(c.client, presenceEntry(c));
          }
          // Replay changes seen while the snapshot was on its way; the last
          // event per client wins, so this is right whether or not the
          // snapshot already reflected them.
          for (const [kind, info] of app.presenceBuffer) {
            if (kind === 'join') map.set(info.client, presenceEntry(info));
            else map.delete(info.client);
          }
          app.presence = map;
          app.presenceBuffer = null;
          renderPresence();
        },
        (err) => {
          if (app.presenceToken === token) app.presenceBuffer = null;
          if (app.channel === channel && err.code !== 'closed') reportError('presence', err);
        }
      );
    }

    // ----- room lifecycle -----

    function resetRoom() {
      app.subscribed = false;
      app.historyLoaded = false;
      app.messages = [];
      app.seen = new Set();
      app.epochs = new Map();
      app.presence = new Map();
      app.presenceBuffer = null;
      app.presenceToken = null;
      els.messages.replaceChildren();
      els.empty.hidden = false;
      els.notice.hidden = true;
      renderPresence();
    }

    function leave() {
      const old = app.channel;
      app.channel = '';
      app.room = '';
      app.joinPromise = null;
      resetRoom();
      els.roomTitle.textContent = 'Not in a room';
      els.roomChannel.textContent = '';
      updateControls();
      return old ? client.unsubscribe(old) : Promise.resolve();
    }

    function join(name, room) {
      name = String(name ?? '').trim();
      room = String(room ?? '').trim();
      if (identityFixed()) name = [...(client.userName || client.user)].slice(0, MAX_NAME).join('');
      const problem = validateName(name) || validateRoom(room);
      if (problem) {
        showJoinError(problem);
        return Promise.reject(new FanoutError('bad_request', problem));
      }
      showJoinError('');
      app.name = name;
      store.set(STORE_NAME, name);
      store.set(STORE_ROOM, room);
      els.name.value = name;
      els.room.value = room;
      if (client.clientId) app.names.set(client.clientId, name);
      setHash(room);
      if (app.auth.dev) {
        // A dev token carries the name: another name is another user, on a
        // new connection (subscriptions carry over).
        if (app.tokenName !== undefined && app.tokenName !== name) client.close();
        client.reconnectNow();
      } else if (!client.user && client.sentName && client.sentName !== name) {
        // The server takes a new name only on a connection without
        // subscriptions: start a new connection, on which the rooms are
        // joined again under the new name (and recover what they missed).
        client.close();
        client.reconnectNow();
      }

      const channel = ROOM_PREFIX + room;
      if (channel === app.channel && app.joinPromise) {
        renderPresence();
        return app.joinPromise;
      }
      if (app.channel) client.unsubscribe(app.channel);
      app.channel = channel;
      app.room = room;
      resetRoom();
      els.roomTitle.textContent = room;
      els.roomChannel.textContent = channel;
      document.title = room + ' · fanout chat';
      updateControls();

      const p = client.subscribe(channel, { presence: true }).then(
        (detail) => ({ channel: detail.channel, epoch: detail.epoch, offset: detail.offset }),
        (err) => {
          if (app.channel === channel) {
            if (err.code !== 'unsubscribed') reportError('join ' + room, err);
            app.channel = '';
            app.joinPromise = null;
            updateControls();
          }
          throw err;
        }
      );
      app.joinPromise = p;
      return p;
    }

    function send(text) {
      text = String(text ?? '').trim();
      if (!text) return Promise.reject(new FanoutError('bad_request', 'empty message'));
      if (!app.channel || !app.subscribed) {
        return Promise.reject(new FanoutError('offline', 'not in a room'));
      }
      // Rendered when the server pushes it back to us (we are subscribed).
      return client.publish(app.channel, { name: app.name, text, ts: Date.now() }).catch((err) => {
        reportError('send', err);
        throw err;
      });
    }

    // ----- live server stats -----

    const STATS_INTERVAL = 2000;
    const statsPoll = { timer: null, busy: false, gone: false };

    /**
     * loadStats polls the server's api/stats (connections, publications per
     * second; PROTOCOL.md) every STATS_INTERVAL while the page is visible; a
     * hidden page stops asking until it is shown again. A server without it
     * (404) hides the view and is not asked again.
     */
    function loadStats() {
      statsPoll.timer = null;
      if (statsPoll.gone || statsPoll.busy || document.hidden) return;
      if (typeof global.fetch !== 'function') {
        statsPoll.gone = els.stats.hidden = true;
        return;
      }
      statsPoll.busy = true;
      global
        .fetch('api/stats', { cache: 'no-store' })
        .then((r) => {
          if (r.status === 404) return 'gone';
          return r.ok ? r.json() : null;
        })
        .then(
          (j) => {
            if (j === 'gone') statsPoll.gone = els.stats.hidden = true;
            else renderStats(j);
          },
          () => renderStats(null) // offline or restarting: keep asking
        )
        .then(() => {
          statsPoll.busy = false;
          if (!statsPoll.gone && !statsPoll.timer) statsPoll.timer = setTimeout(loadStats, STATS_INTERVAL);
        });
    }

    document.addEventListener('visibilitychange', () => {
      if (document.hidden || statsPoll.busy) return;
      clearTimeout(statsPoll.timer);
      loadStats();
    });

    function renderStats(j) {
      if (!j || typeof j !== 'object' || !Number.isFinite(j.connections) || !Number.isFinite(j.messages_per_second)) {
        els.stats.dataset.state = 'stale'; // the last numbers stay, greyed
        return;
      }
      app.stats = { connections: j.connections, messagesPerSecond: j.messages_per_second };
      els.stats.dataset.state = 'live';
      els.statsConnections.textContent = Math.max(0, Math.round(j.connections)).toLocaleString();
      const rate = Math.max(0, j.messages_per_second);
      els.statsRate.textContent = rate < 10 ? rate.toFixed(1) : Math.round(rate).toLocaleString();
    }

    // ----- client events -----

    client.on('state', () => {
      renderStatus();
      updateControls();
    });

    client.on('connected', ({ client: id }) => {
      if (identityFixed()) {
        // Signed in by the server's token endpoint: the token names us.
        app.name = [...(client.userName || client.user)].slice(0, MAX_NAME).join('');
        els.name.value = app.name;
        els.name.readOnly = true;
      }
      if (id) {
        app.myIds.add(id);
        if (app.name) app.names.set(id, app.name);
      }
      renderIdentity();
    });

    client.on('refreshed', (d) => {
      if (!d.ok && d.error && d.error.code !== 'closed') reportError('token refresh', d.error);
    });

    client.on('disconnected', () => {
      app.subscribed = false;
      app.presence = new Map();
      app.presenceBuffer = null;
      app.presenceToken = null;
      renderPresence();
      updateControls();
    });

    client.on('subscribed', (d) => {
      if (d.channel !== app.channel) return;
      app.subscribed = true;
      updateControls();
      loadPresence(d.channel);
      if (!d.initial && !d.recovered) showNotice('Reconnected, but some messages may be missing.');
      // Also when the history asked for before never came (the connection
      // dropped first: a rename reconnects right after joining).
      if (d.initial || !d.recovered || !app.historyLoaded) loadHistory(d.channel);
    });

    client.on('subscribe_error', (d) => {
      // A first join's failure is reported by join(); this covers re-subscribes.
      if (d.channel === app.channel && !d.initial) reportError('rejoin ' + app.room, d.error);
    });

    client.on('pub', (d) => {
      if (d.channel !== app.channel) return;
      addMessage(d.epoch, d);
    });

    client.on('gap', (d) => {
      if (d.channel !== app.channel) return;
      showNotice('Some messages may be missing.');
      loadHistory(d.channel);
    });

    client.on('join', (d) => {
      if (d.channel === app.channel) applyPresence('join', d.info);
    });
    client.on('leave', (d) => {
      if (d.channel === app.channel) applyPresence('leave', d.info);
    });

    // ----- DOM events -----

    els.joinForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      join(els.name.value, els.room.value).then(
        () => els.message.focus(),
        () => {}
      );
    });

    els.room.addEventListener('input', () => {
      const room = els.room.value.trim();
      const problem = room ? validateRoom(room) : '';
      els.room.setAttribute('aria-invalid', problem ? 'true' : 'false');
      if (!problem) showJoinError('');
    });

    els.sendForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const text = els.message.value;
      if (!text.trim()) return;
      els.message.value = '';
      send(text).catch(() => {
        if (!els.message.value) els.message.value = text; // give it back to retry
      });
    });

    // Keep the newest message in view when the layout changes size (mobile
    // keyboards, window resizes), if the reader was at the bottom.
    let pinned = true;
    els.scroller.addEventListener('scroll', () => {
      pinned = nearBottom();
    });
    if (typeof ResizeObserver === 'function') {
      new ResizeObserver(() => {
        if (pinned) els.scroller.scrollTop = els.scroller.scrollHeight;
      }).observe(els.scroller);
    }

    els.retry.addEventListener('click', () => client.reconnectNow());
    els.noticeClose.addEventListener('click', () => {
      els.notice.hidden = true;
    });

    global.addEventListener('online', () => client.reconnectNow());
    global.addEventListener('hashchange', () => {
      const room = roomFromHash();
      if (!room || ROOM_PREFIX + room === app.channel) return;
      els.room.value = room;
      const name = app.name || els.name.value;
      if (!validateName(name.trim())) join(name, room).catch(() => {});
      else if (validateRoom(room)) showJoinError(validateRoom(room));
    });

    // ----- test hook -----

    global.fanoutApp = {
      get state() {
        return client.state;
      },
      get channel() {
        return app.channel;
      },
      get room() {
        return app.room;
      },
      get name() {
        return app.name;
      },
      get clientId() {
        return client.clientId;
      },
      get subscribed() {
        return app.subscribed;
      },
      get epoch() {
        const pos = app.channel ? client.position(app.channel) : null;
        return pos ? pos.epoch : '';
      },
      get lastOffset() {
        const pos = app.channel ? client.position(app.channel) : null;
        return pos ? pos.offset : 0;
      },
      get messages() {
        return app.messages
          .filter((m) => !m.divider)
          .map((m) => ({
            offset: m.offset,
            epoch: m.epoch,
            name: m.name,
            verified: m.verified,
            user: m.user,
            text: m.text,
            client: m.client,
            ts: m.ts,
          }));
      },
      get presence() {
        return [...app.presence.keys()];
      },
      get errors() {
        return app.errors.map((e) => Object.assign({}, e));
      },
      get notices() {
        return app.notices.slice();
      },
      get authMode() {
        return app.auth.mode;
      },
      get user() {
        return client.user;
      },
      get userName() {
        return client.userName;
      },
      get refreshes() {
        return client.refreshes;
      },
      get stats() {
        return app.stats && Object.assign({}, app.stats);
      },
      /** label and hue of a client id as shown (for tests). */
      labelOf: shortId,
      hueOf: hue,
      /** names shown in the presence list, in order. */
      get presenceNames() {
        return [...els.presence.querySelectorAll('.person-name')].map((n) => n.textContent);
      },
      snapshot() {
        const h = global.fanoutApp;
        return {
          state: h.state,
          channel: h.channel,
          room: h.room,
          name: h.name,
          clientId: h.clientId,
          subscribed: h.subscribed,
          epoch: h.epoch,
          lastOffset: h.lastOffset,
          messages: h.messages,
          presence: h.presence,
          errors: h.errors,
          notices: h.notices,
        };
      },
      connect() {
        client.reconnectNow();
      },
      disconnect() {
        client.close();
      },
      join,
      leave,
      send,
      client,
    };

    // ----- boot -----

    const savedName = store.get(STORE_NAME);
    const startRoom = roomFromHash() || store.get(STORE_ROOM) || 'lobby';
    els.name.value = savedName;
    els.room.value = startRoom;
    renderStatus();
    renderPresence();
    updateControls();
    loadStats();
    loadAuth().then(() => {
      if (app.auth.mode !== 'none') client.getToken = getToken;
      if (app.auth.dev && savedName && !validateName(savedName)) app.name = savedName;
      // With dev tokens the name is the identity: wait for it.
      if (!app.auth.dev || app.name) client.connect();
      renderStatus();
      if (savedName && !validateName(savedName) && !validateRoom(startRoom)) {
        join(savedName, startRoom).catch(() => {});
      } else if (!savedName) {
        els.name.focus();
      }
    });
  }

  if (typeof document !== 'undefined' && document.getElementById) {
    if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', startApp);
    else startApp();
  }
})(typeof window !== 'undefined' ? window : globalThis);
