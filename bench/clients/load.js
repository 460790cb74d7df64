'use strict';
// Load clients of the benchmark suite (started by bench/run.py, one mode per process).
//
//   node load.js sse    --url U --clients FILE --tag TAG --out PREFIX [--max-seconds S]
//   node load.js sio    --url U --clients FILE --tag TAG --out PREFIX [--max-seconds S]
//        [--parallel P] [--wait-go 1] [--resume 1]
//        FILE: JSON [{user, token}, ...], one entry per connection. Prints "ready <connected> <failed>
//        <seconds>" once every connection has been tried (seconds: from the start of connecting until then),
//        "progress <events>" every second, and on "stop" (stdin), SIGTERM or max-seconds writes PREFIX.json
//        (per-client counts) and PREFIX.bin (float32 latencies in ms: the time read minus the send time
//        carried in the task title) and exits. P connections are opened at a time (default 50).
//        --wait-go 1: print "loaded", then connect only when "go" comes on stdin (processes start together).
//        --resume 1: reconnect as real clients do after a connection ends. SSE: after the stream's last
//        `retry:` delay, with Last-Event-ID of the last `id:` seen, again after each network error (a non-200
//        answer ends the client, as it ends an EventSource). Socket.IO: socket.io-client's own reconnection
//        (default delays) with an auth function sending {token, last_event_id} (from `stream_start` and the
//        events). Progress lines are then "progress <events> <connected now> <reconnected now>", and PREFIX.json
//        gains `resume`: per client [connects, last connect time (ms, wall clock), events out of order,
//        first disconnect time or null, refusals, connection attempts (the first included)].
//   node load.js post   --url U --token T --rate R --seconds S --tag TAG --users N --out FILE
//        Open loop: R POST /update_task per second for S seconds; post i goes to user i % N
//        (user<k>@example.com; N=0: one shared user, bench@example.com), title "b:TAG:<send time ms>".
//   node load.js http   --url U --method GET|POST --path P --token T --concurrency C
//                       (--seconds S | --count N) --out FILE
//        Closed loop: C connections each sending the next request when the last answered.
//   node load.js replay --url U --token T --last-event-id N --expect E --out FILE [--max-seconds S]
//        One SSE client resuming from N: the time until E events have arrived.

const http = require('http');
const fs = require('fs');
const { performance } = require('perf_hooks');

const now = () => performance.timeOrigin + performance.now(); // wall clock, sub-millisecond

function parseArgs(argv) {
  const args = { _: argv[0] };
  for (let i = 1; i < argv.length; i += 2) args[argv[i].replace(/^--/, '')] = argv[i + 1];
  return args;
}
const args = parseArgs(process.argv.slice(2));
const base = new URL(args.url || 'http://127.0.0.1:5000');
const maxSeconds = Number(args['max-seconds'] || 600);

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

// -- stream readers ------------------------------------------------------------------

class Latencies {
  constructor() {
    this.buf = new Float32Array(1 << 16);
    this.n = 0;
  }
  push(v) {
    if (this.n === this.buf.length) {
      const bigger = new Float32Array(this.buf.length * 2);
      bigger.set(this.buf);
      this.buf = bigger;
    }
    this.buf[this.n++] = v;
  }
}

function readers(transport) {
  const specs = JSON.parse(fs.readFileSync(args.clients, 'utf8'));
  const marker = `b:${args.tag}:`;
  const latencies = new Latencies();
  const resume = args.resume === '1';
  const clients = specs.map((s) => ({ user: s.user, token: s.token, received: 0, dups: 0, seen: new Set(),
    connected: false, failed: null, closed: false,
    // --resume: connected now, connections made, the last one's time, the last id seen and the SSE retry delay
    up: false, connects: 0, connectedAt: null, downAt: null, lastId: null, maxId: -1, outOfOrder: 0,
    retryMs: 2000, refused: 0, attempts: 0 }));
  const sio = transport === 'sio' ? require('socket.io-client') : null;
  let total = 0;
  let finished = false;

  function count(client, id, sentAt, at) {
    if (client.seen.has(id)) {
      client.dups++;
      return;
    }
    if (id < client.maxId) client.outOfOrder++;
    else client.maxId = id;
    client.seen.add(id);
    client.received++;
    total++;
    latencies.push(at - sentAt);
  }

  function onEvent(client, event, at) { // a decoded payload (Socket.IO)
    if (event && typeof event.id === 'number') client.lastId = event.id;
    const title = event && event.task && event.task.title;
    if (typeof title !== 'string' || !title.startsWith(marker)) return;
    count(client, event.id, Number(title.slice(marker.length)), at);
  }

  // An SSE frame's id line and data text. Decoding the JSON of every frame in every client would make the
  // clients, not the server, the limit on this machine: the title's tag and send time are found as text.
  function onFrame(client, id, data, at) {
    const k = data.indexOf(marker);
    if (k < 0) return;
    count(client, id, parseFloat(data.slice(k + marker.length)), at);
  }

  function up(client) {
    client.connected = true;
    client.up = true;
    client.connects++;
    client.connectedAt = now();
  }

  function down(client) {
    if (!client.up) return;
    client.up = false;
    if (client.downAt === null) client.downAt = now();
  }

  // --resume: as EventSource does, the next attempt after the stream's retry delay.
  function sseAgain(client) {
    if (finished || client.failed) return;
    setTimeout(() => { if (!finished) connectSse(client); }, client.retryMs);
  }

  function connectSse(client) {
    return new Promise((resolve) => {
      const path = `/task_updates?access_token=${encodeURIComponent(client.token)}`;
      const headers = { Accept: 'text/event-stream' };
      client.attempts++;
      if (resume && client.lastId !== null) headers['Last-Event-ID'] = String(client.lastId);
      const req = http.get({ host: base.hostname, port: base.port, path, agent: false, headers });
      let settled = false;
      req.setTimeout(120000, () => req.destroy(new Error('connect timeout')));
      req.on('response', (res) => {
        settled = true;
        if (res.statusCode !== 200) {
          client.failed = `HTTP ${res.statusCode}`;
          res.resume();
          return resolve();
        }
        req.setTimeout(0);
        up(client);
        res.setEncoding('utf8');
        let buffer = '';
        res.on('data', (chunk) => {
          const at = now();
          buffer += chunk;
          let cut;
          while ((cut = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let data = null;
            let id = null;
            for (const line of block.split('\n')) {
              if (line.startsWith('data:')) data = (data === null ? '' : data + '\n') + line.slice(5);
              else if (line.startsWith('id:')) id = Number(line.slice(3));
              else if (resume && line.startsWith('retry:')) client.retryMs = Number(line.slice(6)) || client.retryMs;
            }
            if (id !== null) client.lastId = id; // an id line without data moves it too, as in EventSource
            if (data !== null) onFrame(client, id, data, at);
          }
        });
        res.on('close', () => {
          if (finished) return;
          if (!resume) client.closed = true;
          else {
            down(client);
            sseAgain(client);
          }
        });
        res.on('error', () => {});
        resolve();
      });
      req.on('error', (err) => {
        if (resume && client.connected) { // a dropped stream or a failed attempt: try again after the delay
          if (!settled) {
            settled = true;
            down(client);
            sseAgain(client);
          }
        } else if (!client.connected) client.failed = String(err.message || err);
        else if (!finished) client.closed = true;
        resolve();
      });
      client.close = () => req.destroy();
    });
  }

  function connectSio(client) {
    return new Promise((resolve) => {
      // Like a browser, the client offers permessage-deflate unless BENCH_SIO_DEFLATE=0.
      const deflate = process.env.BENCH_SIO_DEFLATE === '0' ? { perMessageDeflate: false } : {};
      // --resume: socket.io-client's own reconnection at its default delays; each attempt's auth carries the
      // last event id seen.
      const auth = !resume ? { token: client.token }
        : (cb) => cb(client.lastId === null ? { token: client.token }
          : { token: client.token, last_event_id: client.lastId });
      const socket = sio.io(base.origin, { transports: ['websocket'], reconnection: resume, forceNew: true,
        auth, timeout: 120000, ...deflate });
      client.attempts++;
      socket.io.on('reconnect_attempt', () => { client.attempts++; });
      socket.on('connect', () => {
        up(client);
        resolve();
      });
      socket.on('connect_error', (err) => {
        if (resume && client.connected) {
          // The manager retries a broken transport by itself; a refusal by the server (socket.active false)
          // it leaves to the application, which tries again as socket.io's docs show, after a second.
          if (!socket.active && !finished) {
            client.refused++;
            setTimeout(() => { if (!finished) socket.connect(); }, 1000);
          }
          return;
        }
        client.failed = String(err.message || err);
        resolve();
      });
      socket.on('disconnect', () => {
        if (resume) down(client);
        else if (!finished && client.connected) client.closed = true;
      });
      socket.on('stream_start', (start) => {
        if (start && typeof start.last_event_id === 'number') client.lastId = start.last_event_id;
      });
      socket.on('task_update', (event) => onEvent(client, event, now()));
      client.close = () => socket.close();
    });
  }

  function finish(why) {
    if (finished) return;
    finished = true;
    const failures = {};
    for (const c of clients) if (c.failed) failures[c.failed] = (failures[c.failed] || 0) + 1;
    const summary = {
      transport, why,
      clients: clients.length,
      connected: clients.filter((c) => c.connected).length,
      closed_early: clients.filter((c) => c.closed).length,
      failures,
      per_client: clients.map((c) => [c.user, c.received, c.dups, c.connected ? 1 : 0]),
      latencies: latencies.n,
    };
    if (resume) {
      summary.resume = clients.map((c) => [c.connects, c.connectedAt, c.outOfOrder, c.downAt, c.refused, c.attempts]);
      summary.up_at_end = clients.filter((c) => c.up).length;
    }
    fs.writeFileSync(args.out + '.bin', Buffer.from(latencies.buf.buffer, 0, latencies.n * 4));
    fs.writeFileSync(args.out + '.json', JSON.stringify(summary));
    for (const c of clients) if (c.close) try { c.close(); } catch (err) { /* closing */ }
    console.log('done');
    setTimeout(() => process.exit(0), 200);
  }

  async function start() {
    const connect = transport === 'sse' ? connectSse : connectSio;
    const parallel = Number(args.parallel || 50);
    const started = now();
    let next = 0;
    async function lane() {
      while (next < clients.length) await connect(clients[next++]);
    }
    await Promise.all(Array.from({ length: parallel }, lane));
    const ok = clients.filter((c) => c.connected).length;
    console.log(`ready ${ok} ${clients.length - ok} ${((now() - started) / 1000).toFixed(3)}`);
    setInterval(() => {
      if (!resume) return console.log(`progress ${total}`);
      let upNow = 0;
      let back = 0;
      for (const c of clients) {
        if (c.up) upNow++;
        if (c.up && c.connects > 1) back++;
      }
      console.log(`progress ${total} ${upNow} ${back}`);
    }, 1000);
  }
  let going = args['wait-go'] !== '1';
  if (going) start();
  else console.log('loaded');
  process.stdin.on('data', (d) => {
    if (!going && String(d).includes('go')) {
      going = true;
      start();
    }
    if (String(d).includes('stop')) finish('stop');
  });
  process.on('SIGTERM', () => finish('sigterm'));
  setTimeout(() => finish('max-seconds'), maxSeconds * 1000);
}

// -- HTTP load -----------------------------------------------------------------------

function request(agent, method, path, token, body) {
  return new Promise((resolve) => {
    const headers = { Authorization: `Bearer ${token}` };
    let payload = null;
    if (body !== undefined) {
      payload = Buffer.from(JSON.stringify(body));
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = payload.length;
    }
    const req = http.request({ host: base.hostname, port: base.port, method, path, agent, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
      res.on('error', (err) => resolve({ status: 0, error: String(err.message) }));
    });
    req.setTimeout(60000, () => req.destroy(new Error('timeout')));
    req.on('error', (err) => resolve({ status: 0, error: String(err.message) }));
    if (payload) req.write(payload);
    req.end();
  });
}

function userOf(i, users) {
  return users > 0 ? `user${i % users}@example.com` : 'bench@example.com';
}

async function post() {
  const rate = Number(args.rate);
  const count = Math.round(rate * Number(args.seconds));
  const users = Number(args.users || 0);
  const agent = new http.Agent({ keepAlive: true, maxSockets: Number(args.concurrency || 64) });
  const results = [];
  const start = now();
  const pending = [];
  for (let i = 0; i < count; i++) {
    const due = start + (i * 1000) / rate;
    const wait = due - now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    const user = userOf(i, users);
    const taskId = users > 0 ? `u${i % users}-t${Math.floor(i / users) % 5}` : `fan-${i % 50}`;
    const sent = now();
    pending.push(request(agent, 'POST', '/update_task', args.token,
      { task_id: taskId, user_email: user, title: `b:${args.tag}:${sent.toFixed(3)}` }).then((r) => {
      let eventId = null;
      if (r.status === 200) try { eventId = JSON.parse(r.body).event_id; } catch (err) { /* counted below */ }
      results.push({ user, status: r.status, ms: now() - sent, eventId, error: r.error });
    }));
  }
  const sendingTook = (now() - start) / 1000;
  await Promise.all(pending);
  const ok = results.filter((r) => r.status === 200 && r.eventId !== null);
  const perUser = {};
  for (const r of ok) perUser[r.user] = (perUser[r.user] || 0) + 1;
  const ms = ok.map((r) => r.ms).sort((a, b) => a - b);
  const statuses = {};
  for (const r of results) {
    const key = r.status + (r.error ? ' ' + r.error : '');
    statuses[key] = (statuses[key] || 0) + 1;
  }
  fs.writeFileSync(args.out, JSON.stringify({
    planned: count, ok: ok.length, statuses, per_user: perUser, sending_seconds: sendingTook,
    total_seconds: (now() - start) / 1000,
    post_ms: { p50: percentile(ms, 50), p99: percentile(ms, 99), max: ms[ms.length - 1] || null },
  }));
  agent.destroy();
}

async function closedLoop() {
  const concurrency = Number(args.concurrency || 50);
  const seconds = args.seconds ? Number(args.seconds) : null;
  const count = args.count ? Number(args.count) : null;
  const method = args.method || 'GET';
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const ms = [];
  const statuses = {};
  let issued = 0;
  const start = now();
  const deadline = start + (seconds || maxSeconds) * 1000;
  async function lane(lane) {
    while (now() < deadline && (count === null || issued < count)) {
      const i = issued++;
      const body = method === 'POST'
        ? { task_id: `w-${i % 1000}`, user_email: `user${i % 100}@example.com`, title: `write ${i}` }
        : undefined;
      const t = now();
      const r = await request(agent, method, args.path, args.token, body);
      statuses[r.status] = (statuses[r.status] || 0) + 1;
      if (r.status === 200) ms.push(now() - t);
    }
  }
  await Promise.all(Array.from({ length: concurrency }, (_, k) => lane(k)));
  const elapsed = (now() - start) / 1000;
  ms.sort((a, b) => a - b);
  fs.writeFileSync(args.out, JSON.stringify({
    method, path: args.path, concurrency, seconds: elapsed, requests: issued, ok: ms.length, statuses,
    rps: ms.length / elapsed, p50_ms: percentile(ms, 50), p90_ms: percentile(ms, 90), p99_ms: percentile(ms, 99),
    max_ms: ms[ms.length - 1] || null,
  }));
  agent.destroy();
}

function replayClient() {
  const expect = Number(args.expect);
  const start = now();
  let received = 0;
  let firstAt = null;
  let done = false;
  const ids = new Set();
  let dups = 0;
  const finish = (why) => {
    if (done) return;
    done = true;
    fs.writeFileSync(args.out, JSON.stringify({ why, expect, received, dups,
      seconds: (now() - start) / 1000, first_event_seconds: firstAt === null ? null : (firstAt - start) / 1000 }));
    req.destroy();
    setTimeout(() => process.exit(0), 100);
  };
  const req = http.get({ host: base.hostname, port: base.port, agent: false,
    path: `/task_updates?access_token=${encodeURIComponent(args.token)}`,
    headers: { Accept: 'text/event-stream', 'Last-Event-ID': String(args['last-event-id'] || 0) } }, (res) => {
    res.setEncoding('utf8');
    let buffer = '';
    res.on('data', (chunk) => {
      buffer += chunk;
      let cut;
      let pos = 0;
      // As EventSource reads a stream: the id from the id line, the data handed over as a string.
      while ((cut = buffer.indexOf('\n\n', pos)) >= 0) {
        const block = buffer.slice(pos, cut);
        pos = cut + 2;
        if (!block.startsWith('id: ') || !block.includes('\ndata: ')) continue;
        const event = { id: Number(block.slice(4, block.indexOf('\n'))) };
        if (firstAt === null) firstAt = now();
        if (ids.has(event.id)) dups++;
        ids.add(event.id);
        received++;
        if (received >= expect) return finish('complete');
      }
      buffer = buffer.slice(pos);
    });
    res.on('end', () => finish('ended'));
  });
  req.on('error', () => finish('error'));
  setTimeout(() => finish('max-seconds'), maxSeconds * 1000);
}

const mode = args._;
if (mode === 'sse' || mode === 'sio') readers(mode);
else if (mode === 'post') post().then(() => process.exit(0));
else if (mode === 'http') closedLoop().then(() => process.exit(0));
else if (mode === 'replay') replayClient();
else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
