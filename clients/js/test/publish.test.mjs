// publish() and server-side subscriptions, without a server: the test plays the
// server through an in-memory WebSocket stand-in (the client's `WebSocket` option).

import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { RoomcastClient } from '../roomcast.js';
import { FakeSocket, next, record, sleep } from './helpers.mjs';

const REF = /^[\w-]{12}\.m\d+$/;
const clients = [];

function open(rooms, options = {}) {
  const client = new RoomcastClient('ws://h/ws', {
    rooms,
    WebSocket: FakeSocket,
    pingInterval: 0,
    minDelay: 0,
    maxDelay: 0,
    ...options,
  });
  clients.push(client);
  return client;
}

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  FakeSocket.reset();
});

function joined(room, data = {}) {
  return { type: 'system', room, data: { event: 'joined', room, recovered: false, epoch: 'e1', offset: 0, ...data } };
}

function ack(ref, room, id = 'id1', offset = 1) {
  return { type: 'system', room, data: { event: 'published', ref, room, id, offset } };
}

function error(code, ref) {
  return { type: 'error', data: { code, error: 'no', ref } };
}

function chat(room, offset, text = 'hi') {
  return { id: `m${offset}`, type: 'chat', room, from: 'u2', data: { text }, timestamp: 'T', offset };
}

// The client's socket after a lost connection, welcomed again (into the URL's room).
async function reconnected(ws, rooms, code = 1006) {
  ws.serverClose(code);
  const again = await FakeSocket.next();
  again.welcome(rooms);
  return again;
}

describe('publish()', () => {
  it('sends a chat with a fresh ref of its own and resolves with the ack', async () => {
    const client = open(['lobby']);
    const log = record(client, ['message', 'error']);
    const ws = await FakeSocket.next();
    ws.welcome(['lobby']);
    const first = client.publish('lobby', { text: 'one' });
    const second = client.publish('lobby', { text: 'two' });
    const [a, b] = ws.of('chat');
    assert.deepEqual({ ...a, ref: null }, { type: 'chat', room: 'lobby', data: { text: 'one' }, ref: null });
    assert.match(a.ref, REF);
    assert.notEqual(a.ref, b.ref);
    ws.receive(ack(b.ref, 'lobby', 'id2', 2));
    ws.receive({ ...ack(a.ref, 'lobby', 'id1'), data: { event: 'published', ref: a.ref, room: 'lobby', id: 'id1' } });
    assert.deepEqual(await second, { room: 'lobby', id: 'id2', offset: 2 });
    assert.deepEqual(await first, { room: 'lobby', id: 'id1', offset: null });
    assert.deepEqual(log, []); // acks are consumed
    // Two clients never share a prefix.
    const other = open(['lobby']);
    const ws2 = await FakeSocket.next();
    ws2.welcome(['lobby']);
    other.publish('lobby', 1).catch(() => {});
    assert.notEqual(ws2.of('chat')[0].ref.split('.')[0], a.ref.split('.')[0]);
  });

  for (const code of ['forbidden_publish', 'not_member', 'rate_limited', 'unavailable']) {
    it(`rejects with the server's ${code}, which is reported as an error too`, async () => {
      const client = open(['lobby']);
      const ws = await FakeSocket.next();
      ws.welcome(['lobby']);
      const errors = record(client, ['error']);
      const pending = client.publish('lobby', { n: 1 });
      const [msg] = ws.of('chat');
      ws.receive(error(code, msg.ref));
      await assert.rejects(pending, (err) => {
        assert.deepEqual([err.code, err.ref], [code, msg.ref]);
        return true;
      });
      assert.equal(errors.length, 1);
      const again = await reconnected(ws, ['lobby']);
      assert.deepEqual(again.of('chat'), []); // refused: never sent again
    });
  }

  it('resends with the same ref after a lost connection, once the room is rejoined', async () => {
    const client = open(['lobby', 'side']);
    const ws = await FakeSocket.next();
    ws.welcome(['lobby']);
    const [join] = ws.of('join');
    ws.receive(joined('side', { ref: join.ref }));
    const first = client.publish('lobby', { n: 1 });
    const second = client.publish('side', { n: 2 });
    const original = ws.of('chat');
    assert.equal(original.length, 2);

    const again = await reconnected(ws, ['lobby']);
    // The URL's room is joined with the welcome: its publication goes at once; the
    // other waits for its room's joined (sent before, it would be not_member).
    assert.deepEqual(again.of('chat'), [original[0]]);
    const [rejoin] = again.of('join');
    assert.equal(rejoin.room, 'side');
    again.receive(joined('side', { ref: rejoin.ref, recovered: true }));
    assert.deepEqual(again.of('chat'), original);
    // The server answers a repeated ref with the first message's id and offset.
    again.receive(ack(original[1].ref, 'side', 'first-id', 1));
    assert.deepEqual(await second, { room: 'side', id: 'first-id', offset: 1 });
    const third = await reconnected(again, ['lobby']);
    assert.deepEqual(third.of('chat'), [original[0]]); // only the unanswered one
    third.receive(ack(original[0].ref, 'lobby'));
    assert.equal((await first).id, 'id1');
  });

  it('waits for the connection, and gives up after its timeout', async () => {
    const client = open(['lobby'], { autoConnect: false });
    const early = client.publish('lobby', 'early');
    const late = client.publish('lobby', 'late', { timeout: 30 });
    await assert.rejects(late, { code: 'timeout' });
    client.connect();
    const ws = await FakeSocket.next();
    ws.welcome(['lobby']);
    assert.deepEqual(
      ws.of('chat').map((m) => m.data),
      ['early'], // the one given up is never sent
    );
    ws.receive(ack(ws.of('chat')[0].ref, 'lobby'));
    assert.equal((await early).room, 'lobby');
  });

  it('rejects at once what it cannot send, and everything when closed', async () => {
    const client = open(['lobby']);
    const ws = await FakeSocket.next();
    ws.welcome(['lobby']);
    await assert.rejects(client.publish('no room', 1), { code: 'invalid_room' });
    await assert.rejects(client.publish('lobby', { big: 1n }), TypeError);
    const pending = client.publish('lobby', 1);
    ws.serverClose(4500, 'banned');
    await assert.rejects(pending, { code: 'closed', closeCode: 4500 });
    await assert.rejects(client.publish('lobby', 2), { code: 'closed' });
  });
});

describe('refs', () => {
  it("never takes the application's own refs for the client's", async () => {
    const client = open(['lobby', 'b']);
    const ws = await FakeSocket.next();
    ws.welcome(['lobby']);
    const [join] = ws.of('join');
    const errors = record(client, ['error', 'message', 'state']);
    // Before, a ref starting with "g" made the client reconnect, and a join's ref
    // dropped the room.
    for (const ref of ['g1', 'a1', join.ref.split('.')[1], 'm1']) {
      client.send('lobby', { x: ref }, { ref });
      ws.receive(error('forbidden_room', ref));
    }
    assert.equal(errors.filter((e) => e.event === 'error').length, 4);
    assert.equal(errors.filter((e) => e.event === 'state').length, 0); // no reconnection
    assert.deepEqual(client.rooms, ['lobby', 'b']);
    // The ack of the application's own chat with a ref is the application's.
    ws.receive(ack('mine', 'lobby', 'idx', 4));
    const [message] = errors.filter((e) => e.event === 'message').map((e) => e.args[0]);
    assert.deepEqual(message.data, { event: 'published', ref: 'mine', room: 'lobby', id: 'idx', offset: 4 });
  });
});

describe('server-side subscriptions', () => {
  const byServer = (room, data = {}) => joined(room, { epoch: 'e9', offset: 5, server: true, ...data });

  it('makes a room the server joined the client to one of its rooms', async () => {
    const client = open(['lobby']);
    const ws = await FakeSocket.next();
    ws.welcome(['lobby']);
    const log = record(client, ['joined', 'message', 'gap']);
    ws.receive(byServer('news'));
    const [info] = log.map((e) => e.args[0]);
    assert.deepEqual(info, {
      room: 'news',
      recovered: false,
      resync: false,
      rejoin: false,
      epoch: 'e9',
      offset: 5,
      lastId: null,
      server: true,
    });
    assert.deepEqual(client.rooms, ['lobby', 'news']);
    ws.receive(chat('news', 6));
    ws.receive(chat('news', 6)); // a duplicate: dropped
    assert.deepEqual(client.roomState('news'), { room: 'news', joined: true, epoch: 'e9', offset: 6, lastId: 'm6' });
    const again = await reconnected(ws, ['lobby']);
    const [rejoin] = again.of('join');
    assert.deepEqual([rejoin.room, rejoin.last_id], ['news', 'm6']); // rejoined from where it was
    assert.equal(log.filter((e) => e.event === 'message').length, 1);
  });

  it("lets the client's own join decide for a room it is joining", async () => {
    const client = open(['lobby', 'news']);
    const ws = await FakeSocket.next();
    ws.welcome(['lobby']);
    const log = record(client, ['joined']);
    ws.receive(byServer('news')); // e.g. the token's channels, at reconnection
    ws.receive(byServer('lobby')); // joined already (the URL)
    assert.deepEqual(log, []);
    const [join] = ws.of('join');
    ws.receive(joined('news', { ref: join.ref }));
    assert.deepEqual(
      log.map((e) => [e.args[0].room, e.args[0].server]),
      [['news', false]],
    );
  });

  it('drops a room the server took the client out of, and does not rejoin it', async () => {
    const client = open(['lobby', 'b']);
    const ws = await FakeSocket.next();
    ws.welcome(['lobby']);
    const [join] = ws.of('join');
    ws.receive(joined('b', { ref: join.ref }));
    const log = record(client, ['left']);
    ws.receive({ type: 'system', room: 'b', data: { event: 'left', room: 'b', server: true, reason: 'moderated' } });
    assert.deepEqual(log.map((e) => e.args[0]), [{ room: 'b', server: true, reason: 'moderated' }]);
    assert.deepEqual(client.rooms, ['lobby']);
    const again = await reconnected(ws, ['lobby']);
    assert.deepEqual(again.of('join'), []);
    // A leave of the client's own is confirmed with server: false.
    const info = client.join('c');
    const [joinC] = again.of('join');
    again.receive(joined('c', { ref: joinC.ref }));
    await info;
    const left = client.leave('c');
    const [leave] = again.of('leave');
    again.receive({ type: 'system', room: 'c', data: { event: 'left', room: 'c', ref: leave.ref } });
    await left;
    assert.deepEqual(log.at(-1).args[0], { room: 'c', server: false, reason: '' });
  });
});

describe('close codes', () => {
  for (const [code, state] of [
    [4100, 'disconnected'],
    [4321, 'disconnected'],
    [4500, 'closed'],
    [4503, 'closed'],
  ]) {
    it(`${code} -> ${state}`, async () => {
      const client = open(['lobby']);
      const ws = await FakeSocket.next();
      ws.welcome(['lobby']);
      const changed = next(client, 'state', (s) => s === state || s === 'closed' || s === 'disconnected');
      ws.serverClose(code, 'why');
      const [s, detail] = await changed;
      assert.deepEqual([s, detail.code, detail.reason], [state, code, 'why']);
      await sleep(20);
      assert.equal(client.state, state === 'closed' ? 'closed' : 'connecting');
    });
  }
});
