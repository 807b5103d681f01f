// roomcast client: one ES module, no dependencies, no build step.
//
// Works in browsers (<script type="module">) and in Node 20+ (Node 20 needs
// --experimental-websocket, or a WebSocket class passed as the `WebSocket` option).
//
//   import { RoomcastClient } from './roomcast.js';
//   const client = new RoomcastClient('wss://example.com/ws', { rooms: ['general'], getToken });
//   client.on('message', (msg) => console.log(msg.room, msg.from, msg.data));
//   client.on('joined', ({ room, recovered, resync }) => { if (resync) reload(room); });
//   await client.join('random');
//   client.send('general', { text: 'hello' });                     // fire and forget
//   const { id, offset } = await client.publish('general', { text: 'hi' }); // the server's ack
//
// The reconnection rules, the close-code table, the recovery behaviour and the
// retry of publications are documented in docs/clients.md.

const ROOM_RE = /^[A-Za-z0-9_\-.:@]{1,128}$/;
const OPEN = 1;

/**
 * Server close codes from 4000 up to (not including) this one ask the client to
 * reconnect; from this one to 4999 they ask it not to (4500: disconnected for good,
 * 4503: the connect-URL room was refused).
 */
export const RECONNECT_CODES_BELOW = 4500;

/** Connection states, as reported by the `state` event. */
export const State = Object.freeze({
  /** Not connected and not trying yet (before connect()). */
  IDLE: 'idle',
  /** Opening a connection (fetching a token, WebSocket handshake, waiting for the welcome). */
  CONNECTING: 'connecting',
  /** Welcomed by the server: messages flow. */
  CONNECTED: 'connected',
  /** The connection ended; a reconnection is scheduled (`detail.delay` ms from now). */
  DISCONNECTED: 'disconnected',
  /** Terminal: close() was called, or the server said not to come back. */
  CLOSED: 'closed',
});

/** What the client does after a connection ends with a given close code. */
export const CloseAction = Object.freeze({
  /** Reconnect with exponential backoff and full jitter. */
  RECONNECT: 'reconnect',
  /** Reconnect, but draw the delay from the widest window, [0, maxDelay]. */
  SLOW: 'slow',
  /** Fetch a fresh token with getToken, then reconnect with backoff. */
  REFRESH: 'refresh',
  /** Do not reconnect: the client goes to `closed`. */
  STOP: 'stop',
});

/**
 * The error type of the client: server `error` messages, refused requests, and
 * client-side failures (token fetch, closed client).
 *
 * `code` is the server's error code (`not_member`, `forbidden_room`, …) or a client
 * code (`not_connected`, `closed`, `timeout`, `token`, `invalid_room`, `bad_frame`);
 * `ref` is the ref of the request it answers, `closeCode` the close code that ended
 * the client, `data` the raw error payload.
 */
export class RoomcastError extends Error {
  constructor(message, { code = null, ref = null, closeCode = null, data = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'RoomcastError';
    this.code = code;
    this.ref = ref;
    this.closeCode = closeCode;
    this.data = data;
  }
}

/**
 * The delay before reconnection attempt `attempt` (0 for the first): "full jitter",
 * a uniform draw from [0, min(maxDelay, minDelay * 2^attempt)] milliseconds.
 */
export function backoffDelay(attempt, { minDelay = 1000, maxDelay = 30000, random = Math.random } = {}) {
  return random() * backoffCeiling(attempt, { minDelay, maxDelay });
}

/** The upper bound of {@link backoffDelay}: min(maxDelay, minDelay * 2^attempt). */
export function backoffCeiling(attempt, { minDelay = 1000, maxDelay = 30000 } = {}) {
  const n = Math.max(0, Math.min(attempt, 60));
  return Math.min(maxDelay, minDelay * 2 ** n);
}

/**
 * Decide what to do after a connection closed with `code` (see docs/clients.md).
 *
 * 1000 (normal: the server ended the session on purpose), 1002, 1003 and 1007 (the
 * client broke the protocol: retrying the same code cannot help) stop the client;
 * 4001 (token expired) refreshes the token when `canRefreshToken`, else stops;
 * 1008 (rate-limit abuse) reconnects slowly; the server's codes from
 * RECONNECT_CODES_BELOW (4500) to 4999 stop; everything else — 1001, 1005, 1006
 * (no close frame: network, failed handshake, dead connection), 1009 (the
 * oversized message is not resent), 1011, 1012, 1013, 4008, 4100 (disconnected by
 * the server), the rest of 4000–4499, unknown codes — reconnects with backoff.
 */
export function closeAction(code, { canRefreshToken = false } = {}) {
  switch (code) {
    case 1000:
    case 1002:
    case 1003:
    case 1007:
      return CloseAction.STOP;
    case 1008:
      return CloseAction.SLOW;
    case 4001:
      return canRefreshToken ? CloseAction.REFRESH : CloseAction.STOP;
    default:
      if (code >= RECONNECT_CODES_BELOW && code <= 4999) return CloseAction.STOP;
      return CloseAction.RECONNECT;
  }
}

/**
 * The `exp` claim of a JWT, in seconds since the epoch, or null when the token
 * has none or is not a JWT. The signature is not verified (the server does that):
 * this only tells the client when to refresh.
 */
export function jwtExpiry(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    let b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    b64 += '='.repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return typeof claims?.exp === 'number' ? claims.exp : null;
  } catch {
    return null;
  }
}

/** Tell whether `name` is a valid room name (1–128 of `A-Z a-z 0-9 _ - . : @`). */
export function isValidRoom(name) {
  return typeof name === 'string' && ROOM_RE.test(name);
}

const DEFAULTS = Object.freeze({
  rooms: [],
  token: null,
  getToken: null,
  minDelay: 1000,
  maxDelay: 30000,
  stableAfter: 5000,
  pingInterval: 20000,
  pingTimeout: 10000,
  requestTimeout: 10000,
  openTimeout: 10000,
  tokenRefreshMargin: 30000,
  gapTimeout: 5000,
  shouldReconnect: null,
  random: Math.random,
  autoConnect: true,
  WebSocket: undefined,
});

/**
 * A roomcast connection that stays connected: it reconnects with backoff,
 * rejoins its rooms, recovers missed messages with `last_id`, detects gaps, pings,
 * and refreshes its token.
 *
 * Options (times in milliseconds):
 * - `rooms`: rooms to join; the first is joined through the URL (`/ws/{room}`).
 * - `token`: a JWT; `getToken`: `async () => jwt`, called to get a fresh one
 *   (before connecting when the current one is missing or about to expire, after
 *   a 4001 close, and `tokenRefreshMargin` before expiry while connected).
 * - `minDelay` (1000), `maxDelay` (30000): backoff bounds; `stableAfter` (5000): a
 *   connection welcomed this long ago resets the backoff.
 * - `pingInterval` (20000, 0 = off), `pingTimeout` (10000): application ping; no
 *   pong in time means the connection is dead: it is dropped and replaced.
 * - `requestTimeout` (10000): how long join(), leave() and ping() wait for a reply
 *   while connected, and publish() for its ack (connected or not), unless told.
 * - `openTimeout` (10000): how long the handshake and the welcome may take.
 * - `gapTimeout` (5000): how long an in-place gap repair may take before the
 *   client reconnects instead.
 * - `shouldReconnect(code, reason)`: return true/false to override the close-code
 *   rules, or undefined to keep them.
 * - `WebSocket`: the WebSocket class (default `globalThis.WebSocket`).
 * - `random`: the random source of the jitter (default `Math.random`).
 * - `autoConnect` (true): connect at once; otherwise call connect().
 *
 * Events (`client.on(name, fn)`): `state` (state, detail), `message` (msg),
 * `presence` (msg), `joined` (info; `server: true` when the server joined the
 * client to the room on its own), `left` ({room, server, reason}), `gap` (info),
 * `refreshed` ({userId, expiresAt}), `error` (RoomcastError).
 *
 * Refs: every ref the client makes is a random per-client prefix, a letter for what
 * it asks (j join, g gap repair, l leave, p ping, a auth, m publication) and a
 * counter, so that replies to the application's own refs (`send(..., {ref})`) are
 * never taken for the client's, and publications of two clients of the same user
 * never share a ref (the server takes a repeated ref for a retry).
 */
export class RoomcastClient {
  #url;
  #opts;
  #WebSocket;
  #listeners = new Map();
  #rooms = new Map(); // name -> room record, in join order
  #state = State.IDLE;
  #started = false;
  #closed = false;
  #ws = null;
  #connectRoom = null;
  #welcomed = false;
  #attempt = 0;
  #status = 'online';
  #token;
  #getToken;
  #refreshNeeded = false;
  #connectionId = null;
  #userId = null;
  #seq = 0;
  #refPrefix = randomPrefix();
  #pending = new Map(); // ref -> {kind, room, resolve, reject, timer, sent}
  #publications = new Map(); // ref -> {room, frame, sent, resolve, reject, timer}, in order
  #timers = { reconnect: null, open: null, ping: null, pong: null, stable: null, refresh: null };
  #autoPingRef = null;

  /**
   * @param {string|URL} url the WebSocket endpoint, e.g. `wss://example.com/ws`
   *   (rooms are appended as `/{room}`; other query parameters are kept).
   * @param {object} options see the class documentation.
   */
  constructor(url, options = {}) {
    this.#url = new URL(String(url));
    this.#opts = { ...DEFAULTS, ...options };
    this.#WebSocket = this.#opts.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError(
        'no WebSocket implementation: pass the WebSocket option (Node 20: run node with --experimental-websocket)',
      );
    }
    this.#token = this.#opts.token ?? null;
    this.#getToken = this.#opts.getToken ?? null;
    for (const room of this.#opts.rooms) {
      if (!isValidRoom(room)) throw new TypeError(`invalid room name ${JSON.stringify(room)}`);
      this.#rooms.set(room, newRoom(room));
    }
    if (this.#opts.autoConnect) queueMicrotask(() => this.connect());
  }

  // -- public state ------------------------------------------------------------------

  /** The connection state: one of {@link State}. */
  get state() {
    return this.#state;
  }

  /** The rooms the client wants to be in (joined now, or once connected), those the server joined it to included. */
  get rooms() {
    return [...this.#rooms.keys()];
  }

  /** The server's id of the current connection (from the welcome), or null. */
  get connectionId() {
    return this.#connectionId;
  }

  /** The user id the server gave this connection (JWT `sub`, or the connection id). */
  get userId() {
    return this.#userId;
  }

  /** The client's presence status (`online` or `away`), restored after reconnecting. */
  get presence() {
    return this.#status;
  }

  /**
   * What the client knows of `room`: `{room, joined, epoch, offset, lastId}`, or
   * null when it is not one of the client's rooms. `lastId` is the id of the last
   * retained message seen, sent as `last_id` when rejoining.
   */
  roomState(room) {
    const r = this.#rooms.get(room);
    if (!r) return null;
    return { room, joined: r.joined, epoch: r.epoch, offset: r.offset, lastId: r.lastId };
  }

  // -- events ------------------------------------------------------------------------

  /** Call `fn` on every `event`; returns a function that removes it. */
  on(event, fn) {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  /** Remove a listener added with on(). */
  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  #emit(event, ...args) {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        // A listener's bug must not break the client; report it like an uncaught error.
        setTimeout(() => {
          throw err;
        });
      }
    }
  }

  #setState(state, detail = {}) {
    this.#state = state;
    this.#emit('state', state, detail);
  }

  // -- lifecycle ---------------------------------------------------------------------

  /** Start connecting (done automatically unless `autoConnect: false`). */
  connect() {
    if (this.#closed) throw new RoomcastError('client is closed', { code: 'closed' });
    if (this.#started) return;
    this.#started = true;
    this.#open();
  }

  /**
   * Close for good: no reconnection after this. Pending requests are rejected.
   * `code` must be 1000 or 3000–4999 (browser rule).
   */
  close(code = 1000, reason = 'client closed') {
    if (this.#closed) return;
    this.#closed = true;
    this.#started = true;
    const ws = this.#ws;
    this.#endSession();
    if (ws) {
      detach(ws);
      try {
        ws.close(code, reason);
      } catch {
        // already closing
      }
    }
    this.#rejectAll(new RoomcastError('client closed', { code: 'closed', closeCode: code }));
    this.#setState(State.CLOSED, { code, reason, deliberate: true });
  }

  /**
   * Drop the current connection (if any) and connect again now, recovering every
   * room with `last_id` — for example when the network changed.
   */
  reconnect() {
    if (this.#closed) throw new RoomcastError('client is closed', { code: 'closed' });
    this.#started = true;
    clearTimeout(this.#timers.reconnect);
    this.#timers.reconnect = null;
    const ws = this.#ws;
    if (ws) {
      this.#endSession();
      detach(ws);
      try {
        ws.close(4000, 'reconnecting');
      } catch {
        // already closing
      }
      const detail = { code: 4000, reason: 'reconnecting', attempt: this.#attempt, delay: 0, ceiling: 0 };
      this.#setState(State.DISCONNECTED, { ...detail, action: CloseAction.RECONNECT });
    }
    this.#open();
  }

  async #open() {
    if (this.#closed) return;
    this.#setState(State.CONNECTING, { attempt: this.#attempt });
    let token;
    try {
      token = await this.#tokenForConnect();
    } catch (err) {
      if (this.#closed) return;
      this.#emit('error', asError(err, 'token', 'getToken failed'));
      this.#refreshNeeded = true;
      this.#afterClose(1006, 'token unavailable', false);
      return;
    }
    if (this.#closed || this.#state !== State.CONNECTING || this.#ws) return;
    const [first] = this.#rooms.values();
    this.#connectRoom = first ? first.name : null;
    const url = new URL(this.#url);
    url.pathname = url.pathname.replace(/\/+$/, '') + (first ? '/' + first.name : '');
    if (first) {
      first.sentLastId = first.lastId;
      if (first.lastId) url.searchParams.set('last_id', first.lastId);
    }
    if (token) url.searchParams.set('token', token);
    let ws;
    try {
      ws = new this.#WebSocket(url.toString());
    } catch (err) {
      // A malformed URL can only fail again.
      this.#emit('error', asError(err, 'invalid_url', 'cannot open WebSocket'));
      this.#stop(1006, String(err?.message ?? err));
      return;
    }
    this.#ws = ws;
    this.#welcomed = false;
    this.#timers.open = setTimeout(() => this.#drop('no welcome'), this.#opts.openTimeout);
    ws.onmessage = (ev) => {
      if (this.#ws !== ws) return;
      let msg;
      try {
        msg = JSON.parse(typeof ev.data === 'string' ? ev.data : new TextDecoder().decode(ev.data));
      } catch {
        this.#emit('error', new RoomcastError('server sent a frame that is not JSON', { code: 'bad_frame' }));
        return;
      }
      if (msg && typeof msg === 'object') this.handleMessage(msg);
    };
    let opened = false;
    const closed = (code, reason) => {
      if (this.#ws !== ws) return;
      const welcomed = this.#welcomed;
      this.#endSession();
      detach(ws);
      this.#afterClose(code, reason, welcomed);
    };
    ws.onopen = () => {
      opened = true;
    };
    ws.onclose = (ev) => closed(ev.code, ev.reason);
    // A close event should follow an error, but some implementations (Node 20's)
    // send none when the connection cannot be opened: then the error ends it.
    ws.onerror = () => {
      if (!opened) {
        closed(1006, 'connection failed');
        try {
          ws.close();
        } catch {
          // not open
        }
      } else {
        setTimeout(() => closed(1006, 'connection error'), 2000);
      }
    };
  }

  async #tokenForConnect() {
    if (!this.#getToken) return this.#token;
    const exp = jwtExpiry(this.#token);
    const soon = exp !== null && exp * 1000 - Date.now() <= this.#opts.tokenRefreshMargin;
    if (!this.#token || this.#refreshNeeded || soon) {
      const token = await this.#getToken();
      if (typeof token !== 'string' || !token) throw new TypeError('getToken must return a token string');
      this.#token = token;
      this.#refreshNeeded = false;
    }
    return this.#token;
  }

  // The connection is gone (its handlers are detached): decide whether and when to retry.
  #afterClose(code, reason, welcomed) {
    if (this.#closed) return;
    const canRefreshToken = Boolean(this.#getToken);
    let action = closeAction(code, { canRefreshToken });
    const override = this.#opts.shouldReconnect?.(code, reason);
    if (override === true && action === CloseAction.STOP) action = CloseAction.RECONNECT;
    if (override === false) action = CloseAction.STOP;
    if (action === CloseAction.STOP) {
      this.#stop(code, reason);
      return;
    }
    // Without a welcome the handshake may have been refused (a browser hides the
    // HTTP status, 401 included): get a fresh token for the next attempt.
    if (action === CloseAction.REFRESH || (!welcomed && canRefreshToken)) this.#refreshNeeded = true;
    const attempt = this.#attempt;
    const { minDelay, maxDelay, random } = this.#opts;
    const ceiling = action === CloseAction.SLOW ? maxDelay : backoffCeiling(attempt, { minDelay, maxDelay });
    const delay = random() * ceiling;
    this.#attempt = attempt + 1;
    this.#setState(State.DISCONNECTED, { code, reason, attempt, delay, ceiling, action });
    this.#timers.reconnect = setTimeout(() => {
      this.#timers.reconnect = null;
      this.#open();
    }, delay);
  }

  #stop(code, reason) {
    this.#closed = true;
    this.#endSession();
    const err = new RoomcastError(`connection closed by the server (${code}${reason ? ': ' + reason : ''})`, {
      code: 'closed',
      closeCode: code,
    });
    this.#rejectAll(err);
    this.#setState(State.CLOSED, { code, reason, deliberate: false });
  }

  // Forget the current connection: timers, per-connection room flags, pings.
  #endSession() {
    for (const key of Object.keys(this.#timers)) {
      if (key === 'reconnect' && !this.#closed) continue;
      clearTimeout(this.#timers[key]);
      clearInterval(this.#timers[key]);
      this.#timers[key] = null;
    }
    this.#ws = null;
    this.#welcomed = false;
    this.#autoPingRef = null;
    for (const room of this.#rooms.values()) {
      room.joined = false;
      room.repairing = false;
      room.joinRef = null;
      clearTimeout(room.gapTimer);
      room.gapTimer = null;
      // join() waiters keep waiting for the next connection; their timeout restarts then.
      for (const w of room.waiters) {
        clearTimeout(w.timer);
        w.timer = null;
      }
    }
    // Publications are sent again, with the same ref, on the next connection.
    for (const p of this.#publications.values()) p.sent = false;
    // Leaves are done (the room is forgotten); pings are answered on this connection or never.
    for (const [ref, p] of [...this.#pending]) {
      if (p.kind === 'ping') {
        const code = this.#closed ? 'closed' : 'not_connected';
        this.#settle(ref, new RoomcastError('connection lost before the pong', { code }));
      } else {
        this.#settle(ref, null, undefined);
      }
    }
  }

  // -- requests ----------------------------------------------------------------------

  /**
   * Join `room` (and rejoin it after every reconnection). Resolves with the join
   * info (see the `joined` event) once joined — now, or after connecting; rejects
   * when the server refuses (`forbidden_room`, …), on timeout while connected, or
   * when the client closes.
   */
  join(room) {
    if (this.#closed) return Promise.reject(new RoomcastError('client is closed', { code: 'closed' }));
    if (!isValidRoom(room)) {
      return Promise.reject(new RoomcastError(`invalid room name ${JSON.stringify(room)}`, { code: 'invalid_room' }));
    }
    let r = this.#rooms.get(room);
    if (r && r.joined) return Promise.resolve(r.info);
    if (!r) {
      r = newRoom(room);
      this.#rooms.set(room, r);
    }
    return new Promise((resolve, reject) => {
      const waiter = { kind: 'join', room, resolve, reject, timer: null };
      if (this.#isConnected()) {
        if (r.joinRef === null) this.#sendJoin(r);
        waiter.timer = this.#requestTimer(waiter, `join ${room}`);
      }
      this.#roomWaiters(room).push(waiter);
    });
  }

  /**
   * Leave `room` (it is no longer rejoined). Resolves once the server confirmed,
   * or at once when not connected.
   */
  leave(room) {
    const r = this.#rooms.get(room);
    if (!r) return Promise.resolve();
    this.#rooms.delete(room);
    clearTimeout(r.gapTimer);
    this.#rejectRoomWaiters(room, new RoomcastError(`left ${room} before it was joined`, { code: 'left' }));
    this.#sendDue(); // its publications waiting for the join: the server answers them
    if (!this.#isConnected() || !(r.joined || r.joinRef !== null || r.repairing)) return Promise.resolve();
    return this.#request('leave', { type: 'leave', room }, room).then(() => undefined);
  }

  /**
   * Send a chat message to `room` (a room this client has joined). Throws a
   * RoomcastError (`not_connected`) while not connected: chat messages are not
   * queued nor resent. Server errors about it arrive as `error` events with `ref`.
   */
  send(room, data, { ref } = {}) {
    if (!this.#isConnected()) {
      throw new RoomcastError('not connected', { code: 'not_connected' });
    }
    const msg = { type: 'chat', room, data };
    if (ref !== undefined) msg.ref = ref;
    this.#sendRaw(msg);
  }

  /**
   * Publish a chat message to `room` and wait for the server's ack: resolves with
   * `{room, id, offset}` (`offset` null when the room retains no messages).
   *
   * The message carries a fresh ref and is sent once connected and in `room`. If
   * the connection drops before the ack, it is sent again, with the same ref, once
   * the client has reconnected and rejoined the room: the server answers a ref the
   * same user repeats in a room with the first message's id and offset instead of
   * publishing it twice (while the room retains it; an anonymous client is a new
   * user on every connection). Rejects with a RoomcastError whose `code` is the
   * server's (`forbidden_publish`, `not_member`, `rate_limited`, `unavailable`, …:
   * not published), `timeout` (no ack within `timeout` ms, default `requestTimeout`,
   * connected or not: it may have been published or not, and is not sent again),
   * `closed`, or `invalid_room`; with a TypeError if `data` is not JSON.
   */
  publish(room, data, { timeout } = {}) {
    if (this.#closed) return Promise.reject(new RoomcastError('client is closed', { code: 'closed' }));
    if (!isValidRoom(room)) {
      return Promise.reject(new RoomcastError(`invalid room name ${JSON.stringify(room)}`, { code: 'invalid_room' }));
    }
    const ref = this.#nextRef('m');
    let frame;
    try {
      frame = JSON.stringify({ type: 'chat', room, data, ref });
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      const ms = timeout ?? this.#opts.requestTimeout;
      const p = { room, frame, sent: false, resolve, reject, timer: null };
      p.timer = setTimeout(() => {
        this.#publications.delete(ref);
        reject(new RoomcastError(`no ack for ${ref} within ${ms} ms`, { code: 'timeout', ref }));
      }, ms);
      this.#publications.set(ref, p);
      this.#sendDue();
    });
  }

  // Send the publications due on this connection: those of joined rooms, and at once
  // those of rooms the client is not in (the server answers, not_member most likely).
  #sendDue() {
    if (!this.#isConnected()) return;
    for (const p of this.#publications.values()) {
      if (p.sent) continue;
      const r = this.#rooms.get(p.room);
      if (r && !r.joined) continue;
      p.sent = true;
      this.#ws.send(p.frame);
    }
  }

  #settlePublication(ref, error, value) {
    const p = this.#publications.get(ref);
    if (!p) return;
    this.#publications.delete(ref);
    clearTimeout(p.timer);
    if (error) p.reject(error);
    else p.resolve(value);
  }

  /**
   * Set this user's presence status, `online` or `away`, in every room of the
   * connection. Remembered and restored after reconnecting.
   */
  setPresence(status) {
    if (status !== 'online' && status !== 'away') throw new TypeError("status must be 'online' or 'away'");
    const changed = status !== this.#status;
    this.#status = status;
    if (changed && this.#isConnected()) this.#sendRaw({ type: 'presence', data: { status } });
  }

  /** Application-level ping: resolves with the round-trip time in ms. */
  ping() {
    if (!this.#isConnected()) return Promise.reject(new RoomcastError('not connected', { code: 'not_connected' }));
    const started = Date.now();
    return this.#request('ping', null, null).then(() => Date.now() - started);
  }

  #isConnected() {
    return this.#welcomed && this.#ws !== null && this.#ws.readyState === OPEN;
  }

  #sendRaw(msg) {
    this.#ws.send(JSON.stringify(msg));
  }

  #nextRef(kind) {
    this.#seq += 1;
    return `${this.#refPrefix}${kind}${this.#seq}`;
  }

  // The letter of a ref this client made (what it asked for), or null.
  #refKind(ref) {
    const prefix = this.#refPrefix;
    if (typeof ref !== 'string' || !ref.startsWith(prefix) || ref.length <= prefix.length) return null;
    return ref[prefix.length];
  }

  #request(kind, msg, room) {
    return new Promise((resolve, reject) => {
      const ref = this.#nextRef(kind[0]);
      const p = { kind, room, resolve, reject, timer: null };
      p.timer = this.#requestTimer(p, `${kind}${room ? ' ' + room : ''}`, ref);
      this.#pending.set(ref, p);
      if (kind === 'ping') this.#sendRaw({ type: 'ping', data: { ref } });
      else this.#sendRaw({ ...msg, ref });
    });
  }

  #requestTimer(p, what, ref = null) {
    return setTimeout(() => {
      if (ref !== null) this.#pending.delete(ref);
      else this.#removeWaiter(p);
      p.reject(new RoomcastError(`no reply to ${what} within ${this.#opts.requestTimeout} ms`, { code: 'timeout' }));
    }, this.#opts.requestTimeout);
  }

  #settle(ref, error, value) {
    const p = this.#pending.get(ref);
    if (!p) return null;
    this.#pending.delete(ref);
    clearTimeout(p.timer);
    if (error) p.reject(error);
    else p.resolve(value);
    return p;
  }

  #roomWaiters(room) {
    const r = this.#rooms.get(room);
    if (!r) return [];
    return r.waiters;
  }

  #removeWaiter(p) {
    const r = this.#rooms.get(p.room);
    if (r) r.waiters = r.waiters.filter((w) => w !== p);
  }

  #rejectRoomWaiters(room, err, rooms = this.#rooms) {
    const r = rooms.get(room);
    const waiters = r ? r.waiters : [];
    if (r) r.waiters = [];
    for (const w of waiters) {
      clearTimeout(w.timer);
      w.reject(err);
    }
  }

  #rejectAll(err) {
    for (const ref of [...this.#pending.keys()]) this.#settle(ref, err);
    for (const ref of [...this.#publications.keys()]) this.#settlePublication(ref, err);
    for (const r of this.#rooms.values()) {
      const waiters = r.waiters;
      r.waiters = [];
      for (const w of waiters) {
        clearTimeout(w.timer);
        w.reject(err);
      }
    }
  }

  #sendJoin(r) {
    const ref = this.#nextRef('j');
    r.joinRef = ref;
    r.sentLastId = r.lastId;
    const msg = { type: 'join', room: r.name, ref };
    if (r.lastId) msg.last_id = r.lastId;
    this.#sendRaw(msg);
  }

  // -- incoming ----------------------------------------------------------------------

  /**
   * Handle one decoded server message as if it had arrived on the socket. The
   * WebSocket's message handler calls this; tests call it (or wrap it) to feed
   * messages such as one with a skipped offset.
   */
  handleMessage(msg) {
    const { type, data } = msg;
    if (type === 'system' && data && typeof data === 'object') {
      if (data.event === 'welcome' && !this.#welcomed) {
        this.#onWelcome(data);
        return;
      }
      // A joined or left with `server: true` and no ref is the server's own doing.
      const byServer = data.server === true && data.ref == null;
      if (data.event === 'joined' && typeof data.room === 'string') {
        if (byServer) this.#onServerJoined(data.room, data);
        else this.#onJoined(data.room, data);
        return;
      }
      if (data.event === 'left' && typeof data.room === 'string') {
        this.#onLeft(data.room, data, byServer);
        return;
      }
      if (data.event === 'published' && this.#refKind(data.ref) === 'm') {
        const offset = typeof data.offset === 'number' ? data.offset : null;
        const room = typeof data.room === 'string' ? data.room : (this.#publications.get(data.ref)?.room ?? null);
        this.#settlePublication(data.ref, null, { room, id: data.id ?? null, offset });
        return; // the ack of a publication: consumed (the application's own refs' are not)
      }
      if (data.event === 'refreshed') {
        this.#emit('refreshed', { userId: data.user_id ?? null, expiresAt: data.expires_at ?? null });
        return;
      }
    }
    if (type === 'pong') {
      this.#onPong(data);
      return;
    }
    if (type === 'error') {
      this.#onError(data);
      return;
    }
    if (typeof msg.room === 'string' && typeof msg.offset === 'number' && !this.#accept(msg)) return;
    this.#emit(type === 'presence' ? 'presence' : 'message', msg);
  }

  #onWelcome(data) {
    this.#welcomed = true;
    clearTimeout(this.#timers.open);
    this.#timers.open = null;
    this.#connectionId = data.connection_id ?? null;
    this.#userId = data.user_id ?? null;
    const connectRoom = this.#connectRoom;
    this.#setState(State.CONNECTED, {
      connectionId: this.#connectionId,
      userId: this.#userId,
      recovered: Boolean(data.recovered),
    });
    const { stableAfter, pingInterval } = this.#opts;
    this.#timers.stable = setTimeout(() => {
      this.#attempt = 0;
    }, stableAfter);
    if (pingInterval > 0) this.#timers.ping = setInterval(() => this.#autoPing(), pingInterval);
    this.#scheduleRefresh();
    if (connectRoom !== null && Array.isArray(data.rooms) && data.rooms.includes(connectRoom)) {
      if (this.#rooms.has(connectRoom)) this.#onJoined(connectRoom, data);
      else this.#sendRaw({ type: 'leave', room: connectRoom }); // left while connecting
    }
    for (const r of this.#rooms.values()) {
      if (!r.joined && r.joinRef === null) this.#sendJoin(r);
      for (const w of r.waiters) {
        if (w.timer === null) w.timer = this.#requestTimer(w, `join ${r.name}`);
      }
    }
    this.#sendDue();
  }

  // The server joined this connection to `room` on its own (the token's channels, the
  // control API). If the client is in it, or joining it, its own join decides (a replay
  // may follow); if a leave of it is on its way, the server processes that after.
  #onServerJoined(room, data) {
    if (!isValidRoom(room)) return;
    const r = this.#rooms.get(room);
    if (r && (r.joined || r.joinRef !== null)) return;
    if ([...this.#pending.values()].some((p) => p.kind === 'leave' && p.room === room)) return;
    if (!r) this.#rooms.set(room, newRoom(room));
    this.#onJoined(room, data, true);
  }

  #onJoined(room, data, server = false) {
    const r = this.#rooms.get(room);
    if (!r) {
      // Joined a room the user left meanwhile: leave it again (unless a leave is on its way).
      const leaving = [...this.#pending.values()].some((p) => p.kind === 'leave' && p.room === room);
      if (!leaving && this.#isConnected()) this.#sendRaw({ type: 'leave', room });
      return;
    }
    const recovered = Boolean(data.recovered);
    const rejoin = r.everJoined;
    const epoch = typeof data.epoch === 'string' ? data.epoch : null;
    const offset = typeof data.offset === 'number' ? data.offset : null;
    // Nothing was missed if the history says so, or if the room is exactly where we left it.
    const unchanged = r.epoch !== null && epoch === r.epoch && offset === r.offset;
    const resync = rejoin && !recovered && !unchanged;
    if (r.epoch !== null && epoch !== r.epoch) r.lastId = null; // ids of a lost history
    r.epoch = epoch;
    if (!recovered) r.offset = offset; // after a replay the messages themselves advance it
    r.joined = true;
    r.everJoined = true;
    r.repairing = false;
    r.joinRef = null;
    clearTimeout(r.gapTimer);
    r.gapTimer = null;
    const info = { room, recovered, resync, rejoin, epoch, offset, lastId: r.sentLastId ?? null, server };
    r.info = info;
    // A join announces the user online: restore a chosen status in this room.
    if (this.#status !== 'online' && this.#isConnected()) {
      this.#sendRaw({ type: 'presence', room, data: { status: this.#status } });
    }
    const waiters = r.waiters;
    r.waiters = [];
    for (const w of waiters) {
      clearTimeout(w.timer);
      w.resolve(info);
    }
    this.#emit('joined', info);
    this.#sendDue();
  }

  #onLeft(room, data, byServer) {
    const r = this.#rooms.get(room);
    if (byServer) {
      // The server took the client out of the room: drop it, it is not rejoined.
      if (r) {
        this.#rooms.delete(room);
        clearTimeout(r.gapTimer);
        this.#rejectRoomWaiters(room, new RoomcastError(`the server removed ${room}`, { code: 'left' }), new Map([[room, r]]));
      }
      this.#emit('left', { room, server: true, reason: typeof data.reason === 'string' ? data.reason : '' });
      this.#sendDue();
      return;
    }
    const ref = data.ref;
    if (typeof ref === 'string') this.#settle(ref, null, undefined);
    if (r) r.joined = false;
    this.#emit('left', { room, server: false, reason: '' });
  }

  #onPong(data) {
    const ref = data && typeof data === 'object' ? data.ref : null;
    if (typeof ref !== 'string') return;
    if (ref === this.#autoPingRef) {
      this.#autoPingRef = null;
      clearTimeout(this.#timers.pong);
      this.#timers.pong = null;
      return;
    }
    this.#settle(ref, null, undefined);
  }

  #onError(data) {
    const d = data && typeof data === 'object' ? data : {};
    const ref = typeof d.ref === 'string' ? d.ref : null;
    const err = new RoomcastError(String(d.error ?? d.code ?? 'server error'), {
      code: d.code ?? null,
      ref,
      data: d,
    });
    // Refs without this client's prefix are the application's: the error is only reported.
    const kind = this.#refKind(ref);
    if (kind === 'g') {
      // The gap repair was refused (e.g. rate limited): reconnecting recovers instead.
      this.#emit('error', err);
      this.reconnect();
      return;
    }
    if (kind === 'm') {
      this.#settlePublication(ref, err); // refused: not published, not sent again
    } else if (kind !== null && this.#pending.has(ref)) {
      // not_member on leave: the room is left either way.
      if (this.#pending.get(ref).kind === 'leave' && d.code === 'not_member') this.#settle(ref, null, undefined);
      else this.#settle(ref, err);
    } else if (kind === 'j') {
      const r = [...this.#rooms.values()].find((x) => x.joinRef === ref);
      if (r) {
        // The server refused the join: forget the room and tell whoever waits for it.
        this.#rooms.delete(r.name);
        this.#rejectRoomWaiters(r.name, err, new Map([[r.name, r]]));
        this.#sendDue();
      }
    }
    this.#emit('error', err);
  }

  // Track a retained room message's offset; false drops it (duplicate, stale, gap being repaired).
  #accept(msg) {
    const r = this.#rooms.get(msg.room);
    if (!r || !r.joined || r.repairing) return false; // left, or being repaired: the replay follows
    if (r.offset !== null) {
      if (msg.offset <= r.offset) return false; // already seen
      if (msg.offset > r.offset + 1 && this.#onGap(r, r.offset + 1, msg.offset)) return false;
    }
    r.offset = msg.offset;
    if (typeof msg.id === 'string' && msg.id) r.lastId = msg.id;
    return true;
  }

  // Messages expected..got-1 were missed. True when a repair started (drop `got`: it is replayed).
  #onGap(r, expected, got) {
    const repairing = r.lastId !== null && this.#isConnected();
    this.#emit('gap', { room: r.name, expected, got, repairing });
    if (!repairing) return false; // no message id to recover from: the app must resync
    // Join the room again with the last id seen: the server replays from there, in
    // order, while the client stays a member (no presence change).
    r.repairing = true;
    r.joined = false;
    const ref = this.#nextRef('g');
    r.joinRef = ref;
    r.sentLastId = r.lastId;
    this.#sendRaw({ type: 'join', room: r.name, ref, last_id: r.lastId });
    r.gapTimer = setTimeout(() => {
      if (r.repairing && this.#rooms.get(r.name) === r && !this.#closed) this.reconnect();
    }, this.#opts.gapTimeout);
    return true;
  }

  // -- keepalive and token refresh ---------------------------------------------------

  #autoPing() {
    if (!this.#isConnected() || this.#autoPingRef !== null) return;
    const ref = this.#nextRef('p');
    this.#autoPingRef = ref;
    this.#sendRaw({ type: 'ping', data: { ref } });
    this.#timers.pong = setTimeout(() => this.#drop('ping timeout'), this.#opts.pingTimeout);
  }

  // No pong (or no welcome) in time: the connection is dead even if the socket
  // does not know yet. Give up on it and reconnect as after an abnormal closure.
  #drop(reason) {
    const ws = this.#ws;
    if (!ws) return;
    const welcomed = this.#welcomed;
    this.#endSession();
    detach(ws);
    try {
      ws.close(4000, reason);
    } catch {
      // already closing
    }
    this.#afterClose(1006, reason, welcomed);
  }

  #scheduleRefresh() {
    clearTimeout(this.#timers.refresh);
    this.#timers.refresh = null;
    if (!this.#getToken) return;
    const exp = jwtExpiry(this.#token);
    if (exp === null) return;
    const left = exp * 1000 - Date.now();
    const margin = Math.min(this.#opts.tokenRefreshMargin, left / 2);
    // At least a second apart, so a token service handing out expired tokens cannot spin us.
    this.#timers.refresh = setTimeout(() => this.#refresh(), Math.max(1000, left - margin));
  }

  async #refresh() {
    const ws = this.#ws;
    let token;
    try {
      token = await this.#getToken();
      if (typeof token !== 'string' || !token) throw new TypeError('getToken must return a token string');
    } catch (err) {
      if (this.#ws !== ws || this.#closed) return;
      this.#emit('error', asError(err, 'token', 'token refresh failed'));
      const exp = jwtExpiry(this.#token);
      const left = exp === null ? 0 : exp * 1000 - Date.now();
      if (left > 0) this.#timers.refresh = setTimeout(() => this.#refresh(), Math.min(5000, Math.max(500, left / 2)));
      return;
    }
    if (this.#closed) return;
    this.#token = token;
    if (this.#ws !== ws || !this.#isConnected()) return; // the next connection uses it
    this.#sendRaw({ type: 'auth', data: { token }, ref: this.#nextRef('a') });
    this.#scheduleRefresh();
  }
}

function newRoom(name) {
  return {
    name,
    joined: false,
    everJoined: false,
    repairing: false,
    epoch: null,
    offset: null,
    lastId: null,
    sentLastId: null,
    joinRef: null,
    gapTimer: null,
    info: null,
    waiters: [],
  };
}

// A random start for the refs of one client (12 base64url characters and a dot).
function randomPrefix() {
  const bytes = new Uint8Array(9);
  globalThis.crypto.getRandomValues(bytes);
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_') + '.';
}

function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
  ws.onerror = () => {};
}

function asError(err, code, what) {
  if (err instanceof RoomcastError) return err;
  return new RoomcastError(`${what}: ${err?.message ?? err}`, { code, cause: err });
}
