// The client against a real `roomcast serve`: connect, chat, rooms, presence, errors, ping, close.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { RoomcastClient } from '../roomcast.js';
import { MS, NO_WEBSOCKET, Server, eventually, freshRoom, next, reach, record, sleep } from './helpers.mjs';

const T = { timeout: 20000 * MS };

describe('client against roomcast serve', { skip: NO_WEBSOCKET ?? false }, () => {
  let server;
  const clients = [];

  before(async () => {
    server = await Server.start(['--max-rooms-per-connection', '3']);
  });

  after(async () => {
    for (const c of clients) c.close();
    await server?.kill();
  });

  function open(rooms, options = {}) {
    const client = new RoomcastClient(server.ws, { rooms, minDelay: 50, maxDelay: 200, ...options });
    clients.push(client);
    return client;
  }

  it('connects, is welcomed, and gets its own chat back', T, async () => {
    const room = freshRoom();
    const client = open([room]);
    const log = record(client);
    const joined = next(client, 'joined');
    const [, detail] = await reach(client, 'connected');
    assert.ok(detail.connectionId);
    assert.equal(client.connectionId, detail.connectionId);
    assert.equal(client.userId, detail.connectionId); // anonymous: user id = connection id
    const [info] = await joined;
    assert.deepEqual(
      { room: info.room, recovered: info.recovered, resync: info.resync, rejoin: info.rejoin, lastId: info.lastId },
      { room, recovered: false, resync: false, rejoin: false, lastId: null },
    );
    assert.equal(typeof info.epoch, 'string');
    assert.equal(info.offset, 0);

    client.send(room, { text: 'hello' });
    const [msg] = await next(client, 'message', (m) => m.type === 'chat');
    assert.equal(msg.room, room);
    assert.equal(msg.from, client.userId);
    assert.deepEqual(msg.data, { text: 'hello' });
    assert.equal(msg.offset, 1);
    assert.match(msg.timestamp, /Z$/);
    assert.deepEqual(client.roomState(room), { room, joined: true, epoch: info.epoch, offset: 1, lastId: msg.id });
    assert.deepEqual(
      log.filter((e) => e.event === 'state').map((e) => e.args[0]),
      ['connecting', 'connected'],
    );
  });

  it('joins and leaves rooms', T, async () => {
    const [a, b] = [freshRoom('a'), freshRoom('b')];
    const client = open([a]);
    await reach(client, 'connected');
    const info = await client.join(b);
    assert.equal(info.room, b);
    assert.equal(info.recovered, false);
    assert.deepEqual(client.rooms, [a, b]);
    // A second join of the same room answers at once with the same info.
    assert.equal(await client.join(b), info);

    const got = record(client, ['message']);
    await server.publish(b, { n: 1 });
    await eventually(() => got.some((e) => e.args[0].room === b));

    await client.leave(b);
    assert.deepEqual(client.rooms, [a]);
    assert.equal(client.roomState(b), null);
    await server.publish(b, { n: 2 });
    await server.publish(a, { n: 3 }); // delivered after n=2 would have been
    await eventually(() => got.some((e) => e.args[0].room === a));
    assert.deepEqual(
      got.map((e) => [e.args[0].room, e.args[0].data.n]),
      [
        [b, 1],
        [a, 3],
      ],
    );
  });

  it('joins rooms asked for before the connection is up', T, async () => {
    const [a, b] = [freshRoom('a'), freshRoom('b')];
    const client = open([a], { autoConnect: false });
    const joined = client.join(b);
    client.connect();
    const info = await joined;
    assert.equal(info.room, b);
    assert.equal(client.state, 'connected');
    const rooms = await server.api(`/api/rooms`);
    const names = rooms.body.rooms.map((r) => r.room);
    assert.ok(names.includes(a) && names.includes(b), JSON.stringify(names));
  });

  it('reports server errors, with the ref of the message they answer', T, async () => {
    const [a, other] = [freshRoom('a'), freshRoom('other')];
    const client = open([a]);
    await reach(client, 'connected');
    const failed = next(client, 'error');
    client.send(other, { text: 'not a member' }, { ref: 'm-42' });
    const [err] = await failed;
    assert.equal(err.code, 'not_member');
    assert.equal(err.ref, 'm-42');
    assert.equal(client.state, 'connected'); // errors keep the connection
  });

  it('rejects join() when the server refuses the room', T, async () => {
    const rooms = [freshRoom('a'), freshRoom('b'), freshRoom('c')];
    const client = open(rooms); // the server allows 3 rooms per connection
    await reach(client, 'connected');
    await Promise.all(rooms.map((r) => client.join(r)));
    const errors = record(client, ['error']);
    const fourth = freshRoom('d');
    await assert.rejects(client.join(fourth), (err) => {
      assert.equal(err.code, 'forbidden_room');
      assert.match(err.ref, /^[\w-]{12}\.j\d+$/); // the client's random prefix, j for join
      return true;
    });
    assert.deepEqual(client.rooms, rooms); // a refused room is not retried
    assert.equal(errors.length, 1);
    await assert.rejects(client.join('a b'), { code: 'invalid_room' }); // checked client-side
    assert.deepEqual(client.rooms, rooms);
  });

  it('sends and receives presence', T, async () => {
    const room = freshRoom('presence');
    const alice = open([room]);
    await alice.join(room);
    const bob = open([room]);
    const online = next(alice, 'presence', (m) => m.data.status === 'online' && m.from !== alice.userId);
    await reach(bob, 'connected');
    const [on] = await online;
    assert.equal(on.room, room);
    assert.equal(on.data.user_id, bob.userId);

    const away = next(alice, 'presence', (m) => m.data.status === 'away');
    bob.setPresence('away');
    assert.equal(bob.presence, 'away');
    const [a] = await away;
    assert.equal(a.from, bob.userId);

    const members = await server.api(`/api/rooms/${room}/presence`);
    const bobs = members.body.members.find((m) => m.user_id === bob.userId);
    assert.equal(bobs.status, 'away');

    const offline = next(alice, 'presence', (m) => m.data.status === 'offline');
    bob.close();
    const [off] = await offline;
    assert.equal(off.data.user_id, bob.userId);
    assert.throws(() => bob.setPresence('busy'), TypeError);
  });

  it('pings the server', T, async () => {
    const client = open([]);
    await reach(client, 'connected');
    const rtt = await client.ping();
    assert.ok(rtt >= 0 && rtt < 2000 * MS, String(rtt));
  });

  it('receives global broadcasts', T, async () => {
    const client = open([]);
    await reach(client, 'connected');
    const got = next(client, 'message', (m) => m.type === 'notification');
    await server.publish(null, { all: true }, 'notification');
    const [msg] = await got;
    assert.deepEqual(msg.data, { all: true });
    assert.equal(msg.room, undefined);
  });

  it('never reconnects after close()', T, async () => {
    const room = freshRoom('closing');
    const client = open([room], { minDelay: 10, maxDelay: 20 });
    await reach(client, 'connected');
    const log = record(client, ['state']);
    const pending = client.ping();
    client.close();
    await assert.rejects(pending, { code: 'closed' });
    assert.equal(client.state, 'closed');
    assert.throws(() => client.send(room, {}), { code: 'not_connected' });
    assert.throws(() => client.reconnect(), { code: 'closed' });
    await sleep(400 * MS);
    assert.deepEqual(
      log.map((e) => e.args[0]),
      ['closed'],
    );
    // The server saw the connection go, and none came back.
    await eventually(async () => {
      const { body } = await server.api('/api/rooms');
      return !body.rooms.some((r) => r.room === room && r.connections > 0);
    });
  });
});
