// roomcast console: a chat page and a live view of the pod that serves it.
//
// Served by `roomcast serve --demo` at /. The name picked here goes to the server,
// which signs a short-lived token for it (POST /demo/token); the WebSocket carries
// that token, so the server, not the page, decides the user id. Everything else
// goes through the JavaScript client (roomcast.js): reconnection with backoff,
// recovery of missed messages, token refresh, presence.

import { RoomcastClient, isValidRoom } from './roomcast.js';

const $ = (id) => document.getElementById(id);
const NAME_RE = /^[A-Za-z0-9_.-]{1,32}$/;
const MAX_MESSAGES = 500; // oldest lines are dropped beyond this
const CHART_POINTS = 60; // one per second
const POLL_MS = 1000;

let client = null;
let session = null; // { name, room }
const members = new Map(); // user id -> 'online' | 'away' | 'offline'
let presenceFetch = 0; // generation of the latest presence snapshot request
let presenceBuffer = null; // presence events seen while a snapshot is on its way

// -- tokens and connection -----------------------------------------------------------

function socketUrl() {
  const url = new URL('/ws', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.toString();
}

async function fetchToken(name) {
  const res = await fetch('/demo/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
    cache: 'no-store',
  });
  let body = null;
  try {
    body = await res.json();
  } catch {
    // not JSON: reported below
  }
  if (!res.ok || typeof body?.token !== 'string') {
    throw new Error(body?.error?.message ?? `token request failed (HTTP ${res.status})`);
  }
  return body.token;
}

async function join(name, room) {
  const token = await fetchToken(name); // throws on an invalid name: shown by the form
  session = { name, room };
  members.clear();
  renderMembers();
  $('messages').replaceChildren();
  $('away').checked = false;
  client = new RoomcastClient(socketUrl(), {
    rooms: [room],
    token,
    getToken: () => fetchToken(name),
    // A console watches one pod come and go: come back quickly.
    minDelay: 500,
    maxDelay: 5000,
  });
  client.on('state', onState);
  client.on('message', onMessage);
  client.on('presence', onPresence);
  client.on('joined', onJoined);
  client.on('error', onError);
  showRoom(true);
}

function leave() {
  if (client) client.close();
  client = null;
  session = null;
  members.clear();
  presenceBuffer = null;
  presenceFetch += 1;
  renderMembers();
  setBadge('idle', 'not connected');
  showRoom(false);
}

// -- client events -----------------------------------------------------------------

function onState(state, detail) {
  switch (state) {
    case 'connecting':
      setBadge(state, detail.attempt > 0 ? `reconnecting (attempt ${detail.attempt + 1})…` : 'connecting…');
      break;
    case 'connected':
      setBadge(state, `connected as ${detail.userId}`);
      break;
    case 'disconnected': {
      const wait = (detail.delay / 1000).toFixed(1);
      setBadge(state, `disconnected (${detail.code}), retrying in ${wait} s`);
      break;
    }
    case 'closed':
      setBadge(state, detail.deliberate ? 'not connected' : `closed by the server (${detail.code})`);
      if (!detail.deliberate) note(`The server ended the session (${detail.code} ${detail.reason || ''}).`, true);
      break;
    default:
      setBadge(state, state);
  }
}

function onMessage(msg) {
  if (!session || (msg.room && msg.room !== session.room)) return;
  const list = $('messages');
  const li = document.createElement('li');
  li.className = 'msg';
  if (client && msg.from === client.userId) li.classList.add('mine');
  if (msg.id) li.dataset.id = msg.id;
  if (typeof msg.offset === 'number') li.dataset.offset = String(msg.offset);
  li.dataset.type = msg.type;
  const time = document.createElement('time');
  if (msg.timestamp) {
    time.dateTime = msg.timestamp;
    time.textContent = new Date(msg.timestamp).toLocaleTimeString();
  }
  const from = document.createElement('span');
  from.className = 'from';
  from.textContent = msg.from ?? msg.type;
  const text = document.createElement('span');
  text.className = 'text';
  const data = msg.data;
  text.textContent = typeof data?.text === 'string' ? data.text : JSON.stringify(data);
  li.append(time, from, text);
  append(list, li);
}

function onPresence(msg) {
  if (!session || msg.room !== session.room) return;
  const user = msg.data?.user_id ?? msg.from;
  const status = msg.data?.status;
  if (typeof user !== 'string' || typeof status !== 'string') return;
  if (presenceBuffer) presenceBuffer.push([user, status]);
  members.set(user, status);
  renderMembers();
}

function onJoined(info) {
  if (!session || info.room !== session.room) return;
  if (!info.rejoin) note(`Joined ${info.room}.`);
  else if (info.resync) note('Reconnected, but messages published meanwhile are no longer retained: some may be missing.', true);
  else note(info.recovered ? 'Reconnected; missed messages recovered.' : 'Reconnected.');
  loadPresence(info.room);
}

function onError(err) {
  // While disconnected, failed token fetches are part of retrying: the badge says enough.
  if (err.code === 'token' && client?.state !== 'connected') return;
  note(`${err.code ?? 'error'}: ${err.message}`, true);
}

// Who is in the room: a snapshot after each join, then the presence events. Events
// that arrive while the snapshot is on its way are applied again after it.
async function loadPresence(room) {
  const generation = ++presenceFetch;
  presenceBuffer = [];
  let body;
  try {
    const res = await fetch(`/demo/rooms/${encodeURIComponent(room)}/presence`, { cache: 'no-store' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    body = await res.json();
  } catch {
    if (generation === presenceFetch) presenceBuffer = null;
    return;
  }
  if (generation !== presenceFetch || !session || session.room !== room) return;
  const present = new Map(body.members.map((m) => [m.user_id, m.status]));
  for (const user of members.keys()) if (!present.has(user)) members.set(user, 'offline');
  for (const [user, status] of present) members.set(user, status);
  for (const [user, status] of presenceBuffer) members.set(user, status);
  presenceBuffer = null;
  renderMembers();
}

// -- rendering ---------------------------------------------------------------------

function setBadge(state, text) {
  const badge = $('conn');
  badge.dataset.state = state;
  badge.textContent = text;
}

function showRoom(joined) {
  $('join-form').hidden = joined;
  $('room-view').hidden = !joined;
  $('people-empty').hidden = joined;
  if (joined) {
    $('room-name').textContent = session.room;
    $('me').textContent = session.name;
    $('text').focus();
  } else {
    $('name').focus();
  }
}

function append(list, li) {
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(li);
  while (list.children.length > MAX_MESSAGES) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function note(text, isError = false) {
  const li = document.createElement('li');
  li.className = isError ? 'note error' : 'note';
  li.textContent = text;
  append($('messages'), li);
}

const ORDER = { online: 0, away: 1, offline: 2 };

function renderMembers() {
  const list = $('members');
  const me = session?.name;
  const entries = [...members].sort(
    ([a, sa], [b, sb]) => (ORDER[sa] ?? 3) - (ORDER[sb] ?? 3) || a.localeCompare(b),
  );
  list.replaceChildren(
    ...entries.map(([user, status]) => {
      const li = document.createElement('li');
      li.dataset.user = user;
      li.dataset.status = status;
      const dot = document.createElement('span');
      dot.className = 'dot';
      dot.setAttribute('aria-hidden', 'true');
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = user;
      li.append(dot, name);
      if (user === me) {
        const you = document.createElement('span');
        you.className = 'me';
        you.textContent = '(you)';
        li.append(you);
      }
      const label = document.createElement('span');
      label.className = 'status';
      label.textContent = status;
      li.append(label);
      return li;
    }),
  );
}

// -- the form ----------------------------------------------------------------------

function setupForms() {
  const params = new URLSearchParams(location.search);
  const name = params.get('name') ?? localStorage.getItem('roomcast.console.name');
  const room = params.get('room') ?? localStorage.getItem('roomcast.console.room');
  if (name) $('name').value = name;
  if (room) $('room').value = room;

  $('join-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const error = $('join-error');
    const name = $('name').value.trim();
    const room = $('room').value.trim();
    const problem = !NAME_RE.test(name)
      ? 'The name must be 1–32 characters of A–Z a–z 0–9 _ . -'
      : !isValidRoom(room)
        ? 'The room must be 1–128 characters of A–Z a–z 0–9 _ - . : @'
        : null;
    error.hidden = problem === null;
    error.textContent = problem ?? '';
    if (problem) return;
    const button = $('join');
    button.disabled = true;
    try {
      await join(name, room);
      localStorage.setItem('roomcast.console.name', name);
      localStorage.setItem('roomcast.console.room', room);
    } catch (err) {
      error.hidden = false;
      error.textContent = `Could not join: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  });

  $('send-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('text');
    const text = input.value.trim();
    if (!text || !client || !session) return;
    try {
      client.send(session.room, { text });
      input.value = '';
    } catch (err) {
      note(err.code === 'not_connected' ? 'Not connected: the message was not sent.' : err.message, true);
    }
  });

  $('away').addEventListener('change', (ev) => {
    if (client) client.setPresence(ev.target.checked ? 'away' : 'online');
  });
  $('leave').addEventListener('click', leave);
  window.addEventListener('online', () => {
    if (client && client.state !== 'connected' && client.state !== 'closed') client.reconnect();
  });
}

// -- the pod view ------------------------------------------------------------------

const samples = []; // [{ sent, received }] messages per second
let previous = null;

async function poll() {
  try {
    const res = await fetch('/demo/stats', { cache: 'no-store' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const stats = await res.json();
    if (previous && previous.node === stats.node && stats.time > previous.time) {
      const dt = stats.time - previous.time;
      samples.push({
        sent: Math.max(0, (stats.messages_sent - previous.messages_sent) / dt),
        received: Math.max(0, (stats.messages_received - previous.messages_received) / dt),
      });
      if (samples.length > CHART_POINTS) samples.shift();
    }
    previous = stats;
    renderStats(stats);
  } catch {
    $('pod').dataset.reachable = 'false';
    $('pod-status').textContent = 'The pod does not answer; retrying every second.';
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function rate(value) {
  return value === undefined ? '–' : value < 10 ? value.toFixed(1) : String(Math.round(value));
}

function renderStats(stats) {
  const last = samples[samples.length - 1];
  $('pod').dataset.reachable = 'true';
  $('pod-node').textContent = `node ${stats.node}`;
  $('stat-connections').textContent = String(stats.connections);
  $('stat-rooms').textContent = String(stats.rooms);
  $('stat-sent').textContent = rate(last?.sent);
  $('stat-received').textContent = rate(last?.received);
  $('stat-broker').textContent = stats.broker === 'redis' ? 'Redis' : 'in-memory';
  $('stat-redis').textContent = stats.redis ?? 'not used';
  $('stat-redis').dataset.status = stats.redis ?? 'none';
  $('pod-status').textContent = stats.draining
    ? 'Draining: shutting down.'
    : stats.ready
      ? `Ready; up ${Math.round(stats.uptime)} s.`
      : 'Not ready: the broker is unreachable.';
  renderChart();
}

function renderChart() {
  const peak = Math.max(1, ...samples.map((s) => Math.max(s.sent, s.received)));
  const step = 300 / (CHART_POINTS - 1);
  const points = (key) =>
    samples
      .map((s, i) => {
        const x = 300 - (samples.length - 1 - i) * step;
        const y = 96 - (s[key] / peak) * 90;
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      })
      .join(' ');
  $('line-sent').setAttribute('points', points('sent'));
  $('line-received').setAttribute('points', points('received'));
  $('chart-peak').textContent = rate(peak);
}

// -- start -------------------------------------------------------------------------

setupForms();
poll();
