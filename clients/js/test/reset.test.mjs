// A room's history changed under a connected client (lost, or rewound by a Redis
// failover): the server says so with an unsolicited `joined` (no ref, no `server`).
// The test plays the server through an in-memory WebSocket stand-in.

import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { RoomcastClient } from '../roomcast.js';
import { FakeSocket, record } from './helpers.mjs';

const clients = [];

function open(rooms) {
  const client = new RoomcastClient('ws://h/ws', {
    rooms,
    WebSocket: FakeSocket,
    pingInterval: 0,
    minDelay: 0,
    maxDelay: 0,
  });
  clients.push(client);
  return client;
}

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  FakeSocket.reset();
});

function chat(room, offset, text) {
  return { id: `${text}-${offset}`, type: 'chat', room, from: 'u2', data: { text }, timestamp: 'T', offset };
}

describe('a reset of a room', () => {
  it('resyncs the room and takes the messages that follow, whose offsets were seen before', async () => {
    const client = open(['lobby']);
    const ws = await FakeSocket.next();
    ws.welcome(['lobby']);
    for (let i = 1; i <= 6; i++) ws.receive(chat('lobby', i, 'old'));
    const log = record(client, ['message', 'joined']);
    // The failover kept 1..3; 4, 5, 6 are new messages now.
    ws.receive({
      type: 'system',
      room: 'lobby',
      data: { event: 'joined', room: 'lobby', recovered: false, epoch: 'e2', offset: 3 },
    });
    for (let i = 4; i <= 6; i++) ws.receive(chat('lobby', i, 'new'));
    const [first, ...rest] = log;
    assert.equal(first.event, 'joined');
    const [info] = first.args;
    assert.deepEqual(
      { resync: info.resync, recovered: info.recovered, epoch: info.epoch, offset: info.offset },
      { resync: true, recovered: false, epoch: 'e2', offset: 3 },
    );
    assert.deepEqual(
      rest.map(({ event, args: [m] }) => [event, m.data.text, m.offset]),
      [['message', 'new', 4], ['message', 'new', 5], ['message', 'new', 6]],
    );
    assert.deepEqual(client.roomState('lobby'), { room: 'lobby', joined: true, epoch: 'e2', offset: 6, lastId: 'new-6' });
  });

  it('without the notice, the same offsets are copies and dropped', async () => {
    const client = open(['lobby']);
    const ws = await FakeSocket.next();
    ws.welcome(['lobby']);
    for (let i = 1; i <= 6; i++) ws.receive(chat('lobby', i, 'old'));
    const log = record(client, ['message']);
    ws.receive(chat('lobby', 4, 'new'));
    assert.deepEqual(log, []); // which is why the server must send it
  });
});
