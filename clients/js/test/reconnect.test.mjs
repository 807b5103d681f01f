// Reconnection, recovery with last_id, gap repair, dead connections, backoff and
// the close-code rules, against real `roomcast serve` processes.

import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';

import { RoomcastClient } from '../roomcast.js';
import { MS, NO_WEBSOCKET, Proxy, Server, eventually, freshRoom, next, reach, record, sleep } from './helpers.mjs';

const T = { timeout: 30000 * MS };

describe('reconnection', { skip: NO_WEBSOCKET ?? false }, () => {
  const cleanup = [];

  after(async () => {
    for (const fn of cleanup.reverse()) await fn();
  });

  async function startServer(args = [], port = null) {
    const server = await Server.start(args, port);
    cleanup.push(() => server.kill());
    return server;
  }

  async function startProxy(server) {
    const proxy = await Proxy.start(server.port);
    cleanup.push(() => proxy.close());
    return proxy;
  }

  function open(url, rooms, options = {}) {
    const client = new RoomcastClient(url, { rooms, minDelay: 50, maxDelay: 200, ...options });
    cleanup.push(() => client.close());
    return client;
  }

  const texts = (log, room) =>
    log.filter((e) => e.event === 'message' && e.args[0].room === room).map((e) => e.args[0].data.text);

  it('reconnects after the server is killed and restarted on the same port', T, async () => {
    let server = await startServer();
    const [a, b] = [freshRoom('a'), freshRoom('b')];
    const client = open(server.ws, [a, b]);
    await client.join(b);
    client.send(a, { text: 'before' });
    await next(client, 'message');
    const first = client.connectionId;

    const down = next(client, 'state', (s) => s === 'disconnected');
    await server.kill('SIGKILL');
    const [, detail] = await down;
    assert.equal(detail.code, 1006); // no close frame from a killed process
    assert.equal(detail.action, 'reconnect');

    const joined = [];
    client.on('joined', (info) => joined.push(info));
    server = await startServer([], server.port);
    await reach(client, 'connected', 10000 * MS);
    await eventually(() => joined.length === 2);
    assert.notEqual(client.connectionId, first);
    // The memory broker lost the history: room a (where a message was seen) cannot be
    // recovered and says so; room b saw nothing and is rejoined as it was (offset 0)
    // in a new epoch, which still means the app must resync.
    const byRoom = Object.fromEntries(joined.map((j) => [j.room, j]));
    assert.equal(byRoom[a].rejoin, true);
    assert.equal(byRoom[a].recovered, false);
    assert.equal(byRoom[a].resync, true);
    assert.ok(byRoom[a].lastId, 'rejoined with last_id');
    assert.equal(byRoom[b].rejoin, true);
    assert.equal(byRoom[b].lastId, null);
    const rooms = (await server.api('/api/rooms')).body.rooms.map((r) => r.room);
    assert.ok(rooms.includes(a) && rooms.includes(b));

    // 1012 (server shutting down) is retried as well.
    const restarting = next(client, 'state', (s) => s === 'disconnected');
    await server.kill('SIGTERM');
    const [, again] = await restarting;
    assert.equal(again.code, 1012);
    server = await startServer([], server.port);
    await reach(client, 'connected', 10000 * MS);
  });

  it('recovers messages published while it was disconnected', T, async () => {
    const server = await startServer();
    const proxy = await startProxy(server);
    const [a, b] = [freshRoom('a'), freshRoom('b')];
    // random() = 1: every delay is its ceiling, so the 600 ms window is certain.
    const client = open(proxy.ws, [a, b], { minDelay: 600 * MS, maxDelay: 600 * MS, random: () => 1 });
    const log = record(client);
    await client.join(b);
    await server.publish(a, { text: 'a1' });
    await server.publish(b, { text: 'b1' });
    await eventually(() => texts(log, a).length === 1 && texts(log, b).length === 1);
    const lastA = client.roomState(a).lastId;
    const lastB = client.roomState(b).lastId;

    const down = next(client, 'state', (s) => s === 'disconnected');
    proxy.drop();
    const [, detail] = await down;
    assert.equal(detail.delay, 600 * MS);
    for (const text of ['a2', 'a3']) await server.publish(a, { text });
    await server.publish(b, { text: 'b2' });

    const joined = [];
    client.on('joined', (info) => joined.push(info));
    await reach(client, 'connected');
    await eventually(() => texts(log, a).length === 3 && texts(log, b).length === 2);
    assert.deepEqual(texts(log, a), ['a1', 'a2', 'a3']);
    assert.deepEqual(texts(log, b), ['b1', 'b2']);
    const byRoom = Object.fromEntries(joined.map((j) => [j.room, j]));
    // a through the URL (?last_id=), b through a join message with last_id.
    assert.deepEqual(
      [byRoom[a].recovered, byRoom[a].resync, byRoom[a].lastId],
      [true, false, lastA],
    );
    assert.deepEqual(
      [byRoom[b].recovered, byRoom[b].resync, byRoom[b].lastId],
      [true, false, lastB],
    );
    // Offsets carry on, so the next live message is in order.
    await server.publish(a, { text: 'a4' });
    await eventually(() => texts(log, a).length === 4);
    assert.equal(log.filter((e) => e.event === 'gap').length, 0);
  });

  it('repairs a gap while connected by rejoining with last_id', T, async () => {
    const server = await startServer();
    const room = freshRoom('gap');
    const client = open(server.ws, [room]);
    await client.join(room);
    // Lose one real message between the socket and the client's bookkeeping.
    const handle = client.handleMessage.bind(client);
    let lost = 0;
    client.handleMessage = (msg) => {
      if (msg.data?.text === 'lost' && lost++ === 0) return; // only the first copy
      handle(msg);
    };
    const log = record(client);
    const connection = client.connectionId;
    const first = await server.publish(room, { text: 'one' });
    await eventually(() => texts(log, room).length === 1);
    const gapped = next(client, 'gap');
    const rejoined = next(client, 'joined');
    await server.publish(room, { text: 'lost' });
    await server.publish(room, { text: 'three' });

    const [gap] = await gapped;
    assert.deepEqual(gap, { room, expected: first.offset + 1, got: first.offset + 2, repairing: true });
    const [info] = await rejoined;
    assert.equal(info.rejoin, true);
    assert.equal(info.recovered, true);
    assert.equal(info.lastId, first.id); // the last message it did see
    await eventually(() => texts(log, room).length === 3);
    assert.deepEqual(texts(log, room), ['one', 'lost', 'three']);
    assert.equal(client.connectionId, connection, 'repaired in place, without reconnecting');
    assert.equal(lost, 2, 'the replay brought the lost message');
    // It stayed a member throughout: no offline/online for itself.
    const own = log.filter((e) => e.event === 'presence' && e.args[0].data.user_id === client.userId);
    assert.deepEqual(own, []);
    await sleep(200 * MS);
    assert.deepEqual(texts(log, room), ['one', 'lost', 'three'], 'nothing twice');
  });

  it('detects a fed message with a skipped offset and rejoins with last_id', T, async () => {
    const server = await startServer();
    const room = freshRoom('fed');
    const client = open(server.ws, [room]);
    await client.join(room);
    const log = record(client);
    const real = await server.publish(room, { text: 'real' });
    await eventually(() => texts(log, room).length === 1);
    const rejoined = next(client, 'joined');
    client.handleMessage({
      id: 'fake',
      type: 'chat',
      room,
      data: { text: 'from the future' },
      timestamp: new Date().toISOString(),
      offset: real.offset + 2,
    });
    const [info] = await rejoined;
    assert.deepEqual([info.lastId, info.recovered, info.rejoin], [real.id, true, true]);
    assert.deepEqual(
      log.filter((e) => e.event === 'gap').map((e) => e.args[0]),
      [{ room, expected: real.offset + 1, got: real.offset + 2, repairing: true }],
    );
    // The fake was dropped, the client is still in order.
    await server.publish(room, { text: 'next' });
    await eventually(() => texts(log, room).length === 2);
    assert.deepEqual(texts(log, room), ['real', 'next']);
    assert.equal(client.roomState(room).offset, real.offset + 1);
  });

  it('drops a connection that stops answering pings, and replaces it', T, async () => {
    const server = await startServer();
    const proxy = await startProxy(server);
    const client = open(proxy.ws, [freshRoom('dead')], { pingInterval: 200 * MS, pingTimeout: 300 * MS });
    await reach(client, 'connected');
    const first = client.connectionId;
    const started = Date.now();
    const down = next(client, 'state', (s) => s === 'disconnected');
    proxy.stall = true; // the TCP connection stays open; nothing gets through
    const [, detail] = await down;
    const took = Date.now() - started;
    assert.equal(detail.reason, 'ping timeout');
    assert.ok(took >= 300 * MS && took < 1500 * MS, `detected after ${took} ms`);
    proxy.stall = false;
    await reach(client, 'connected');
    assert.notEqual(client.connectionId, first);
  });

  it('backs off with full jitter within [0, min(max, min * 2^n)], and resets when stable', T, async () => {
    const server = await startServer();
    const proxy = await startProxy(server);
    proxy.refuse = true;
    const draws = [];
    const random = () => {
      const r = [1, 0.5, 0][draws.length % 3];
      draws.push(r);
      return r;
    };
    const client = open(proxy.ws, [], { minDelay: 20 * MS, maxDelay: 200 * MS, stableAfter: 300 * MS, random });
    const states = record(client, ['state']);
    const disconnects = () => states.filter((e) => e.args[0] === 'disconnected').map((e) => e.args[1]);
    await eventually(() => disconnects().length >= 8, 10000 * MS);
    const seen = disconnects().slice(0, 8);
    seen.forEach((d, n) => {
      const ceiling = Math.min(200 * MS, 20 * MS * 2 ** n);
      assert.equal(d.attempt, n);
      assert.equal(d.ceiling, ceiling);
      assert.equal(d.delay, draws[n] * ceiling);
      assert.ok(d.delay >= 0 && d.delay <= ceiling);
    });
    assert.ok(proxy.accepted >= 8);

    // Once connected for stableAfter, the next failure starts again from attempt 0.
    proxy.refuse = false;
    await reach(client, 'connected', 5000 * MS);
    await sleep(400 * MS);
    const count = disconnects().length;
    proxy.drop();
    await eventually(() => disconnects().length > count);
    assert.equal(disconnects()[count].attempt, 0);

    // A connection that drops before it is stable does not reset the count.
    await reach(client, 'connected', 5000 * MS);
    proxy.drop();
    await eventually(() => disconnects().length > count + 1);
    assert.equal(disconnects()[count + 1].attempt, 1);
  });

  it('reconnects after 1009 (message too big) without resending it', T, async () => {
    const server = await startServer(['--max-message-bytes', '1000']);
    const room = freshRoom('big');
    const client = open(server.ws, [room]);
    await reach(client, 'connected');
    const log = record(client);
    const down = next(client, 'state', (s) => s === 'disconnected');
    client.send(room, { text: 'x'.repeat(5000) });
    const [, detail] = await down;
    assert.equal(detail.code, 1009);
    assert.equal(detail.action, 'reconnect');
    await reach(client, 'connected');
    client.send(room, { text: 'small' });
    await eventually(() => texts(log, room).length === 1);
    assert.deepEqual(texts(log, room), ['small']);
  });

  it('reconnects slowly after 1008 (rate-limit abuse)', T, async () => {
    const server = await startServer(['--rate', '1', '--burst', '1']);
    const room = freshRoom('abuse');
    const client = open(server.ws, [room], { minDelay: 10 * MS, maxDelay: 400 * MS });
    await reach(client, 'connected');
    const down = next(client, 'state', (s) => s === 'disconnected');
    for (let i = 0; i < 40 && client.state === 'connected'; i++) client.send(room, { i });
    const [, detail] = await down;
    assert.equal(detail.code, 1008);
    assert.equal(detail.action, 'slow');
    assert.equal(detail.ceiling, 400 * MS); // not min * 2^0 = 10
    await reach(client, 'connected');
  });

  it('stops when told not to retry, and never after close()', T, async () => {
    const server = await startServer();
    const codes = [];
    const client = open(server.ws, [freshRoom('stop')], {
      shouldReconnect: (code) => {
        codes.push(code);
        return false;
      },
    });
    await reach(client, 'connected');
    const closed = next(client, 'state', (s) => s === 'closed');
    await server.kill('SIGTERM');
    const [, detail] = await closed;
    assert.deepEqual(codes, [1012]);
    assert.deepEqual([detail.code, detail.deliberate], [1012, false]);
    const later = record(client, ['state']);
    await startServer([], server.port);
    await sleep(500 * MS);
    assert.deepEqual(later, []);
    assert.equal(client.state, 'closed');
  });

  it('reconnects at once on reconnect(), recovering with last_id', T, async () => {
    const server = await startServer();
    const room = freshRoom('now');
    const client = open(server.ws, [room], { minDelay: 5000, maxDelay: 5000 });
    await client.join(room);
    const seen = await server.publish(room, { text: 'seen' });
    await eventually(() => client.roomState(room).lastId === seen.id);
    const first = client.connectionId;
    const down = next(client, 'state', (s) => s === 'disconnected');
    const rejoined = next(client, 'joined');
    client.reconnect();
    const [, detail] = await down;
    assert.equal(detail.code, 4000);
    const [info] = await rejoined;
    assert.notEqual(client.connectionId, first);
    assert.deepEqual([info.rejoin, info.recovered, info.lastId], [true, true, seen.id]);
  });

  it('restores its presence status after reconnecting', T, async () => {
    const server = await startServer();
    const proxy = await startProxy(server);
    const room = freshRoom('away');
    const alice = open(server.ws, [room]);
    await alice.join(room);
    const bob = open(proxy.ws, [room]);
    await bob.join(room);
    bob.setPresence('away');
    const first = bob.userId;
    proxy.drop();
    const [msg] = await next(
      alice,
      'presence',
      (m) => m.data.status === 'away' && m.data.user_id !== first && m.data.user_id === bob.userId,
    );
    assert.equal(msg.room, room);
    assert.equal(bob.presence, 'away');
  });

  it('gives up on a handshake that never completes', T, async () => {
    const server = await startServer();
    const proxy = await startProxy(server);
    proxy.stall = true; // TCP connects, the upgrade never gets an answer
    const client = open(proxy.ws, [freshRoom('stalled')], { openTimeout: 300 * MS });
    const [, detail] = await next(client, 'state', (s) => s === 'disconnected');
    assert.deepEqual([detail.code, detail.reason], [1006, 'no welcome']);
    proxy.stall = false;
    await reach(client, 'connected');
  });
});
