// Tokens against `roomcast serve --jwt-secret … --auth-required`: the token in the
// URL, refresh before expiry with the auth message, 4001 with and without getToken.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { RoomcastClient, jwtExpiry } from '../roomcast.js';
import { MS, NO_WEBSOCKET, Server, freshRoom, makeToken, next, reach, record, sleep } from './helpers.mjs';

const SECRET = 'roomcast-client-tests-secret-0123456789abcdef';
const T = { timeout: 30000 * MS };

describe('tokens', { skip: NO_WEBSOCKET ?? false }, () => {
  let server;
  let unsupported = null;
  const clients = [];

  before(async () => {
    try {
      server = await Server.start(['--jwt-secret', SECRET, '--auth-required']);
    } catch (err) {
      unsupported = `roomcast serve cannot check tokens here: ${String(err.message).split('\n')[1] ?? err.message}`;
      return;
    }
    // A server that ignores tokens would welcome us as an anonymous connection.
    const probe = new RoomcastClient(server.ws, { token: makeToken(SECRET, 'probe'), maxDelay: 100 });
    await reach(probe, 'connected').catch(() => null);
    if (probe.userId !== 'probe') unsupported = 'roomcast serve does not verify JWTs yet';
    probe.close();
  });

  after(async () => {
    for (const c of clients) c.close();
    await server?.kill();
  });

  function open(options) {
    const client = new RoomcastClient(server.ws, { rooms: [freshRoom('auth')], minDelay: 50, maxDelay: 200, ...options });
    clients.push(client);
    return client;
  }

  it('connects as the token subject', T, async (t) => {
    if (unsupported) return t.skip(unsupported);
    const client = open({ token: makeToken(SECRET, 'alice') });
    await reach(client, 'connected');
    assert.equal(client.userId, 'alice');
  });

  it('refreshes the token with the auth message before it expires', T, async (t) => {
    if (unsupported) return t.skip(unsupported);
    const issued = [];
    const getToken = async () => {
      const token = makeToken(SECRET, 'bob', 3);
      issued.push(jwtExpiry(token));
      return token;
    };
    const client = open({ getToken });
    const log = record(client, ['state', 'refreshed', 'error']);
    await reach(client, 'connected');
    const connection = client.connectionId;
    await sleep(5000 * MS); // past the first token's exp
    assert.equal(client.state, 'connected');
    assert.equal(client.connectionId, connection, 'the same connection throughout');
    assert.ok(issued.length >= 3, `getToken called ${issued.length} times`);
    const refreshed = log.filter((e) => e.event === 'refreshed').map((e) => e.args[0]);
    assert.ok(refreshed.length >= 2);
    assert.equal(refreshed[0].userId, 'bob');
    assert.deepEqual(log.filter((e) => e.event === 'error'), []);
    assert.deepEqual(
      log.filter((e) => e.event === 'state').map((e) => e.args[0]),
      ['connecting', 'connected'],
    );
  });

  it('stops on 4001 when it has no way to get a new token', T, async (t) => {
    if (unsupported) return t.skip(unsupported);
    const client = open({ token: makeToken(SECRET, 'carol', 2) });
    await reach(client, 'connected');
    const [, detail] = await next(client, 'state', (s) => s === 'closed', 6000 * MS);
    assert.deepEqual([detail.code, detail.deliberate], [4001, false]);
    const later = record(client, ['state']);
    await sleep(400 * MS);
    assert.deepEqual(later, []);
  });

  it('reconnects with a fresh token after 4001 when getToken is given', T, async (t) => {
    if (unsupported) return t.skip(unsupported);
    let serviceDown = false;
    let calls = 0;
    const getToken = async () => {
      calls += 1;
      if (serviceDown) throw new Error('token service unavailable');
      serviceDown = true; // the refresh before expiry fails...
      return makeToken(SECRET, 'dave', 3);
    };
    const client = open({ getToken });
    const errors = record(client, ['error']);
    await reach(client, 'connected');
    const first = client.connectionId;
    const [, detail] = await next(client, 'state', (s) => s === 'disconnected', 8000 * MS);
    assert.equal(detail.code, 4001);
    assert.equal(detail.action, 'refresh');
    serviceDown = false; // ...and works again for the reconnection
    await reach(client, 'connected');
    assert.notEqual(client.connectionId, first);
    assert.equal(client.userId, 'dave');
    assert.ok(errors.some((e) => e.args[0].code === 'token'), 'the failed refresh was reported');
    assert.ok(calls >= 3);
  });

  it('gets a new token when the handshake is refused', T, async (t) => {
    if (unsupported) return t.skip(unsupported);
    const tokens = [makeToken('a-secret-the-server-does-not-know-0123456789', 'erin'), makeToken(SECRET, 'erin')];
    let calls = 0;
    const client = open({ getToken: async () => tokens[Math.min(calls++, 1)] });
    const states = record(client, ['state']);
    await reach(client, 'connected');
    assert.equal(calls, 2);
    assert.equal(client.userId, 'erin');
    assert.deepEqual(
      states.map((e) => e.args[0]),
      ['connecting', 'disconnected', 'connecting', 'connected'],
    );
  });
});
