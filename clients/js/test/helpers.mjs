// Test support: a real `roomcast serve` child process, a TCP proxy that can cut
// or stall connections, HS256 tokens, and waiting for client events.
// Only Node built-ins.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** Every timeout in the tests is a multiple of this (ROOMCAST_TEST_SLOWDOWN scales it). */
export const MS = Number(process.env.ROOMCAST_TEST_SLOWDOWN ?? '1');

/** Why the WebSocket tests cannot run here, or null when they can. */
export const NO_WEBSOCKET =
  typeof globalThis.WebSocket === 'function'
    ? null
    : 'no global WebSocket: run `node --experimental-websocket --test clients/js/test/` on Node 20';

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A TCP port on 127.0.0.1 that is free right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function serverCommand() {
  const exe = join(ROOT, '.venv', 'bin', 'roomcast');
  if (existsSync(exe)) return [exe, []];
  return [process.env.PYTHON ?? 'python3', ['-m', 'roomcast']];
}

/**
 * One `roomcast serve` process on 127.0.0.1, with `--rate 0 --api-insecure` plus
 * `args`; stopped by its PID with kill().
 */
export class Server {
  constructor(port, args = []) {
    this.port = port;
    this.args = args;
    this.proc = null;
    this.output = '';
  }

  static async start(args = [], port = null) {
    const server = new Server(port ?? (await freePort()), args);
    await server.spawn();
    return server;
  }

  get http() {
    return `http://127.0.0.1:${this.port}`;
  }

  get ws() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  async spawn() {
    const [cmd, pre] = serverCommand();
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ROOMCAST_')));
    delete env.REDIS_URL;
    const args = [...pre, 'serve', '--host', '127.0.0.1', '--port', String(this.port), '--rate', '0', '--api-insecure'];
    this.proc = spawn(cmd, [...args, ...this.args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => this.proc.once('exit', (code, signal) => resolve({ code, signal })));
    this.proc.stdout.on('data', (d) => (this.output += d));
    this.proc.stderr.on('data', (d) => (this.output += d));
    const deadline = Date.now() + 15000 * MS;
    while (Date.now() < deadline) {
      if (this.proc.exitCode !== null) throw new Error(`server exited with ${this.proc.exitCode}:\n${this.output}`);
      try {
        const res = await fetch(`${this.http}/healthz`);
        if (res.status === 200) return this;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    throw new Error(`server did not become ready:\n${this.output}`);
  }

  /** Send `signal` to the server's PID and wait for it to exit. */
  async kill(signal = 'SIGKILL') {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    process.kill(this.proc.pid, signal);
    await this.exited;
  }

  /** POST /api/publish; returns the response body ({id, timestamp, offset}). */
  async publish(room, data, type = 'chat') {
    const res = await fetch(`${this.http}/api/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(room === null ? { type, data } : { room, type, data }),
    });
    if (res.status !== 200) throw new Error(`publish: ${res.status} ${await res.text()}`);
    return res.json();
  }

  async api(path) {
    const res = await fetch(`${this.http}${path}`);
    return { status: res.status, body: await res.json() };
  }

  /** POST `body` to `path` (the control API); returns {status, body}. */
  async post(path, body) {
    const res = await fetch(`${this.http}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
    return { status: res.status, body: parsed };
  }
}

/**
 * A TCP proxy in front of a server: drop() cuts every connection (the client
 * sees an abnormal closure, 1006), `stall = true` stops forwarding bytes while
 * keeping the sockets open (a dead connection), `refuse = true` closes new
 * connections at once, `cutNextUpload = true` forwards the next bytes a client
 * sends, then cuts the client's side at once, so that no reply reaches it, while
 * the server's side stays open (the server handles what it got) until release().
 */
export class Proxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.sockets = new Set();
    this.held = new Set();
    this.stall = false;
    this.refuse = false;
    this.cutNextUpload = false;
    this.cuts = 0;
    this.accepted = 0;
  }

  static async start(targetPort) {
    const proxy = new Proxy(targetPort);
    proxy.server = net.createServer((down) => proxy.#pipe(down));
    await new Promise((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    proxy.port = proxy.server.address().port;
    return proxy;
  }

  get ws() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  #pipe(down) {
    this.accepted += 1;
    if (this.refuse) {
      down.destroy();
      return;
    }
    const up = net.connect(this.targetPort, '127.0.0.1');
    for (const [a, b] of [
      [down, up],
      [up, down],
    ]) {
      this.sockets.add(a);
      a.on('data', (chunk) => {
        if (this.stall || b.destroyed) return;
        b.write(chunk);
        if (a === down && this.cutNextUpload) {
          this.cutNextUpload = false;
          this.cuts += 1;
          this.held.add(up); // the server's side stays open...
          this.sockets.delete(up);
          down.destroy(); // ...the client's goes before any reply
        }
      });
      a.on('close', () => {
        this.sockets.delete(a);
        if (!this.held.has(b)) b.destroy();
      });
      a.on('error', () => {
        if (!this.held.has(b)) b.destroy();
      });
    }
  }

  drop() {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  /** Close the server's side of the connections cut by `cutNextUpload`. */
  release() {
    for (const s of this.held) s.destroy();
    this.held.clear();
  }

  async close() {
    this.drop();
    this.release();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

/** An HS256 JWT for `sub`, valid for `ttl` seconds (may be negative). */
export function makeToken(secret, sub, ttl = 3600, extra = {}) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const now = Math.floor(Date.now() / 1000);
  const payload = b64url(JSON.stringify({ sub, iat: now, exp: now + ttl, ...extra }));
  const sig = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${sig}`;
}

/** Record every event of `client` in order: [{event, args}]. */
export function record(client, events = ['state', 'message', 'presence', 'joined', 'left', 'gap', 'error']) {
  const log = [];
  for (const event of events) client.on(event, (...args) => log.push({ event, args }));
  return log;
}

/**
 * Resolve with the arguments of the next `event` of `client` for which
 * `predicate(...args)` is true; reject after `timeout` ms.
 */
export function next(client, event, predicate = () => true, timeout = 5000 * MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no matching '${event}' event within ${timeout} ms`));
    }, timeout);
    const off = client.on(event, (...args) => {
      if (!predicate(...args)) return;
      clearTimeout(timer);
      off();
      resolve(args);
    });
  });
}

/** Resolve when `client` reaches `state` (at once if it is there). */
export function reach(client, state, timeout = 5000 * MS) {
  if (client.state === state) return Promise.resolve([state, {}]);
  return next(client, 'state', (s) => s === state, timeout);
}

/** Poll `check` until it returns a truthy value; return it. */
export async function eventually(check, timeout = 5000 * MS, interval = 20) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`condition still false after ${timeout} ms`);
    await sleep(interval);
  }
}

/** A unique room name. */
export function freshRoom(prefix = 'room') {
  return `${prefix}-${Math.random().toString(16).slice(2, 10)}`;
}

/**
 * An in-memory stand-in for the WebSocket class, passed as the client's `WebSocket`
 * option, with which a unit test plays the server: `FakeSocket.next()` resolves
 * with the next socket the client opens; `open()`, `receive(obj)` and
 * `serverClose(code, reason)` drive it; `sent` holds what the client sent, decoded.
 * No network is involved.
 */
export class FakeSocket {
  static #waiting = [];
  static #made = [];

  constructor(url) {
    this.url = String(url);
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    const waiter = FakeSocket.#waiting.shift();
    if (waiter) waiter(this);
    else FakeSocket.#made.push(this);
  }

  /** The next socket a client opens (one already opened and not taken yet, first). */
  static next(timeout = 2000) {
    const made = FakeSocket.#made.shift();
    if (made) return Promise.resolve(made);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no socket opened')), timeout);
      FakeSocket.#waiting.push((ws) => {
        clearTimeout(timer);
        resolve(ws);
      });
    });
  }

  static reset() {
    FakeSocket.#waiting = [];
    FakeSocket.#made = [];
  }

  send(text) {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(text));
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  open() {
    this.readyState = 1;
    this.onopen?.();
  }

  receive(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }

  serverClose(code, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Open, and welcome the client into `rooms` (the URL's room, if any). */
  welcome(rooms = [], extra = {}) {
    this.open();
    const data = { event: 'welcome', connection_id: 'c1', user_id: 'u1', rooms, recovered: false, epoch: 'e1', offset: 0 };
    this.receive({ type: 'system', data: { ...data, ...extra } });
  }

  /** What the client sent of `type`, in order. */
  of(type) {
    return this.sent.filter((m) => m.type === type);
  }
}
