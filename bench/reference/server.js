'use strict';
// The reference server of the benchmark suite: what a user would write instead of our
// service, in Node.js with the http module and socket.io 4.8, keeping nothing.
//
// Same wire contract as the service:
//   POST /update_task  {task_id, user_email, title?, status?, description?}
//        -> 200 {"status": "task updated, notification will be sent asynchronously", "task", "event_id"}
//        and the event {"id", "type": "task.updated", "task_id", "task", "occurred_at"} goes to every
//        Socket.IO client (`task_update`) and every open SSE response (`id:` and `data:` lines).
//   GET /task_updates  Server-Sent Events (token in ?access_token= or Authorization: Bearer)
//   GET /healthz       {"status": "ok", "streams": {"sse": n, "socketio": n}}
// Tokens (HS256 JWTs, verified when SECRET_KEY is set, else only decoded): a reader whose
// token has the `admin` scope, or who gives no token, sees every event; any other reader
// only the events of tasks whose user_email is its `sub`.
//
// Run: PORT=8000 SECRET_KEY=... node server.js

const http = require('http');
const crypto = require('crypto');
const { Server } = require('socket.io');

const PORT = Number(process.env.PORT || 8000);
const HOST = process.env.HOST || '127.0.0.1';
const SECRET = process.env.SECRET_KEY || '';
const HEARTBEAT_MS = Number(process.env.SSE_HEARTBEAT_SECONDS || 15) * 1000;

let lastId = 0;
const sseAll = new Set(); // responses that see every event
const sseByUser = new Map(); // sub -> Set of responses

function b64urlDecode(text) {
  return Buffer.from(text.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
}

// The reader of a token: {all: true} or {all: false, sub}; null when the token is invalid.
function reader(token) {
  if (!token) return { all: true };
  const parts = String(token).split('.');
  if (parts.length !== 3) return null;
  if (SECRET) {
    const expected = crypto.createHmac('sha256', SECRET).update(parts[0] + '.' + parts[1]).digest();
    const given = b64urlDecode(parts[2]);
    if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return null;
  }
  let claims;
  try {
    claims = JSON.parse(b64urlDecode(parts[1]).toString('utf8'));
  } catch (err) {
    return null;
  }
  if (claims.exp && claims.exp * 1000 < Date.now()) return null;
  const scopes = String(claims.scope || '').split(' ');
  if (scopes.includes('admin')) return { all: true };
  return { all: false, sub: String(claims.sub || '') };
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function broadcast(event) {
  // One encoding per event for every subscriber of each transport.
  const frame = `id: ${event.id}\ndata: ${JSON.stringify(event)}\n\n`;
  for (const res of sseAll) res.write(frame);
  const mine = sseByUser.get(event.task.user_email);
  if (mine) for (const res of mine) res.write(frame);
  io.to(['all', 'user:' + event.task.user_email]).emit('task_update', event);
}

function updateTask(req, res) {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (err) {
      return sendJson(res, 400, { error: { code: 'bad_request', message: 'malformed JSON', details: [] } });
    }
    if (!body || typeof body.task_id !== 'string' || typeof body.user_email !== 'string') {
      return sendJson(res, 422, { error: { code: 'invalid', message: 'task_id and user_email are required', details: [] } });
    }
    const now = new Date().toISOString();
    const task = {
      task_id: body.task_id,
      user_email: body.user_email,
      title: body.title || '',
      description: body.description || '',
      status: body.status || 'open',
      created_at: now,
      updated_at: now,
    };
    const event = { id: ++lastId, type: 'task.updated', task_id: task.task_id, task, occurred_at: now };
    sendJson(res, 200, { status: 'task updated, notification will be sent asynchronously', task, event_id: event.id });
    broadcast(event);
  });
}

function taskUpdates(req, res, url) {
  let token = url.searchParams.get('access_token');
  const header = req.headers.authorization || '';
  if (!token && header.startsWith('Bearer ')) token = header.slice(7);
  const who = reader(token);
  if (!who) return sendJson(res, 401, { error: { code: 'unauthorized', message: 'invalid token', details: [] } });
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', 'X-Accel-Buffering': 'no' });
  res.write('retry: 2000\n: connected\n\n');
  let set = sseAll;
  if (!who.all) {
    set = sseByUser.get(who.sub);
    if (!set) sseByUser.set(who.sub, (set = new Set()));
  }
  set.add(res);
  const heartbeat = setInterval(() => res.write(': heartbeat\n\n'), HEARTBEAT_MS);
  req.socket.setNoDelay(true);
  res.on('close', () => {
    clearInterval(heartbeat);
    set.delete(res);
    if (!who.all && set.size === 0) sseByUser.delete(who.sub);
  });
}

function sseCount() {
  let n = sseAll.size;
  for (const set of sseByUser.values()) n += set.size;
  return n;
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (req.method === 'POST' && url.pathname === '/update_task') return updateTask(req, res);
  if (req.method === 'GET' && url.pathname === '/task_updates') return taskUpdates(req, res, url);
  if (req.method === 'GET' && url.pathname === '/healthz') {
    return sendJson(res, 200, { status: 'ok', streams: { sse: sseCount(), socketio: io.engine.clientsCount } });
  }
  sendJson(res, 404, { error: { code: 'not_found', message: 'not found', details: [] } });
});
server.keepAliveTimeout = 60000;
server.headersTimeout = 65000;
server.requestTimeout = 0;

const io = new Server(server, { serveClient: false, cors: { origin: true } });
io.use((socket, next) => {
  const who = reader(socket.handshake.auth && socket.handshake.auth.token);
  if (!who) return next(new Error('invalid token'));
  socket.data.who = who;
  next();
});
io.on('connection', (socket) => {
  socket.join(socket.data.who.all ? 'all' : 'user:' + socket.data.who.sub);
});

// Event-loop stalls longer than 100 ms go to the log: the suite's reader of last resort when latencies jump.
let tick = Date.now();
setInterval(() => {
  const now = Date.now();
  if (now - tick > 200) console.log(`${new Date(now).toISOString()} event loop stalled ${now - tick - 100} ms`);
  tick = now;
}, 100).unref();

server.listen(PORT, HOST, () => {
  console.log(`reference server on http://${HOST}:${PORT} (pid ${process.pid})`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
