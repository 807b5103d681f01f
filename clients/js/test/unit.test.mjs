// The client's pure parts: backoff, the close-code rules, JWT expiry, room names.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  CloseAction,
  RECONNECT_CODES_BELOW,
  RoomcastClient,
  backoffCeiling,
  backoffDelay,
  closeAction,
  isValidRoom,
  jwtExpiry,
} from '../roomcast.js';
import { makeToken } from './helpers.mjs';

describe('backoff', () => {
  it('grows as min * 2^n up to max', () => {
    const opts = { minDelay: 100, maxDelay: 3000 };
    const ceilings = [0, 1, 2, 3, 4, 5, 6, 50, 1000].map((n) => backoffCeiling(n, opts));
    assert.deepEqual(ceilings, [100, 200, 400, 800, 1600, 3000, 3000, 3000, 3000]);
  });

  it('draws uniformly from [0, ceiling] (full jitter)', () => {
    const opts = { minDelay: 100, maxDelay: 3000 };
    assert.equal(backoffDelay(3, { ...opts, random: () => 0 }), 0);
    assert.equal(backoffDelay(3, { ...opts, random: () => 0.5 }), 400);
    assert.equal(backoffDelay(3, { ...opts, random: () => 0.999 }), 799.2);
    for (let n = 0; n < 12; n++) {
      const ceiling = Math.min(3000, 100 * 2 ** n);
      const seen = Array.from({ length: 200 }, () => backoffDelay(n, opts));
      assert.ok(seen.every((d) => d >= 0 && d <= ceiling), `attempt ${n}`);
      // Full jitter spreads over the whole window, not just its top.
      assert.ok(Math.min(...seen) < ceiling / 4 && Math.max(...seen) > (ceiling * 3) / 4, `spread ${n}`);
    }
  });

  it('defaults to 1 s doubling up to 30 s', () => {
    assert.equal(backoffCeiling(0), 1000);
    assert.equal(backoffCeiling(4), 16000);
    assert.equal(backoffCeiling(5), 30000);
    assert.equal(backoffCeiling(0, { minDelay: 0 }), 0);
  });
});

describe('closeAction', () => {
  it('follows the documented close-code table', () => {
    const table = {
      1000: 'stop',
      1001: 'reconnect',
      1002: 'stop',
      1003: 'stop',
      1005: 'reconnect',
      1006: 'reconnect',
      1007: 'stop',
      1008: 'slow',
      1009: 'reconnect',
      1011: 'reconnect',
      1012: 'reconnect',
      1013: 'reconnect',
      4000: 'reconnect',
      4001: 'stop',
      4008: 'reconnect',
      4100: 'reconnect', // disconnected by the server: come back
      4321: 'reconnect',
      4499: 'reconnect',
      4500: 'stop', // disconnected for good
      4503: 'stop', // the connect-URL room was refused
      4599: 'stop',
      4999: 'stop',
      5000: 'reconnect',
    };
    for (const [code, action] of Object.entries(table)) {
      assert.equal(closeAction(Number(code)), action, `close code ${code}`);
    }
  });

  it('stops from RECONNECT_CODES_BELOW to 4999, whatever the token', () => {
    assert.equal(RECONNECT_CODES_BELOW, 4500);
    assert.equal(closeAction(RECONNECT_CODES_BELOW - 1), CloseAction.RECONNECT);
    assert.equal(closeAction(RECONNECT_CODES_BELOW, { canRefreshToken: true }), CloseAction.STOP);
  });

  it('refreshes the token on 4001 only when it can', () => {
    assert.equal(closeAction(4001, { canRefreshToken: true }), CloseAction.REFRESH);
    assert.equal(closeAction(4001, { canRefreshToken: false }), CloseAction.STOP);
    assert.equal(closeAction(1000, { canRefreshToken: true }), CloseAction.STOP);
  });
});

describe('jwtExpiry', () => {
  it('reads exp without verifying', () => {
    const token = makeToken('secret', 'alice', 120);
    const exp = jwtExpiry(token);
    assert.ok(Math.abs(exp - (Date.now() / 1000 + 120)) < 5);
    // A wrong signature does not matter to the client: the server checks it.
    assert.equal(jwtExpiry(token.slice(0, -4) + 'AAAA'), exp);
  });

  it('handles base64url characters and padding', () => {
    const payload = Buffer.from(JSON.stringify({ sub: '>>>???', exp: 1234567890 })).toString('base64url');
    assert.match(payload, /[-_]/);
    assert.equal(jwtExpiry(`e30.${payload}.sig`), 1234567890);
  });

  it('is null for anything else', () => {
    for (const bad of [null, '', 'abc', 'a.b', 'a.!!!.c', `e30.${btoa('{"sub":"x"}')}.s`, 'a.b.c.d']) {
      assert.equal(jwtExpiry(bad), null, String(bad));
    }
  });
});

describe('room names', () => {
  it('accepts the server alphabet only', () => {
    for (const ok of ['general', 'a', 'A-z_0.9:@', 'x'.repeat(128)]) assert.ok(isValidRoom(ok), ok);
    for (const bad of ['', 'x'.repeat(129), 'a b', 'a/b', 'é', null, 7]) assert.ok(!isValidRoom(bad), String(bad));
  });

  it('are checked by the constructor and join()', async () => {
    class NeverOpens {
      close() {}
    }
    const opts = { WebSocket: NeverOpens, autoConnect: false };
    assert.throws(() => new RoomcastClient('ws://127.0.0.1:9/ws', { ...opts, rooms: ['a b'] }), TypeError);
    const client = new RoomcastClient('ws://127.0.0.1:9/ws', opts);
    await assert.rejects(client.join('no/slash'), { code: 'invalid_room' });
    assert.deepEqual(client.rooms, []);
    client.close();
  });
});

describe('construction', () => {
  it('needs a WebSocket implementation', () => {
    const saved = globalThis.WebSocket;
    try {
      globalThis.WebSocket = undefined;
      assert.throws(() => new RoomcastClient('ws://127.0.0.1:9/ws'), /WebSocket/);
    } finally {
      globalThis.WebSocket = saved;
    }
  });

  it('does not connect before connect() with autoConnect: false, nor after close()', async () => {
    let opened = 0;
    class Counting {
      constructor() {
        opened += 1;
      }
      close() {}
    }
    const client = new RoomcastClient('ws://127.0.0.1:9/ws', { WebSocket: Counting, autoConnect: false });
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(opened, 0);
    assert.equal(client.state, 'idle');
    client.close();
    assert.equal(client.state, 'closed');
    assert.throws(() => client.connect(), { code: 'closed' });
    assert.throws(() => client.send('x', {}), { code: 'not_connected' });
    await assert.rejects(client.join('x'), { code: 'closed' });
    assert.equal(opened, 0);
  });
});
