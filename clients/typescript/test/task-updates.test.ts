/** The client against the real service: both transports, resume, filters, refusals, a server restart. */
import { EventSource } from 'eventsource';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  type ConnectionState,
  type EventSourceConstructor,
  type TaskEvent,
  type TaskUpdatesOptions,
  TaskUpdatesError,
  taskUpdates,
} from '../src/index.js';
import { ADMIN, type Server, makeToken, postUpdate, removeInstance, startServer, waitUntil } from './server.js';

const TRANSPORTS = ['socketio', 'sse'] as const;

interface Recorder {
  events: TaskEvent[];
  states: ConnectionState[];
  failures: Error[];
  error: unknown;
  unsubscribe(): void;
}

function record(options: TaskUpdatesOptions): Recorder {
  const stream = taskUpdates(options);
  const rec: Recorder = { events: [], states: [], failures: [], error: undefined, unsubscribe: () => undefined };
  const stateSub = stream.state$.subscribe((s) => rec.states.push(s));
  const failureSub = stream.failures$.subscribe((f) => rec.failures.push(f));
  const sub = stream.subscribe({ next: (e) => rec.events.push(e), error: (err: unknown) => (rec.error = err) });
  rec.unsubscribe = () => {
    sub.unsubscribe();
    stateSub.unsubscribe();
    failureSub.unsubscribe();
  };
  return rec;
}

const isOpen = (rec: Recorder) => () => rec.states.at(-1) === 'open';

async function openStreams(baseUrl: string): Promise<{ sse: number; socketio: number }> {
  const response = await fetch(`${baseUrl}/healthz`);
  return ((await response.json()) as { streams: { sse: number; socketio: number } }).streams;
}

async function until(predicate: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, 20));
  }
}

describe.each(TRANSPORTS)('over %s', (transport) => {
  let server: Server;
  const opts = (extra: Partial<TaskUpdatesOptions> = {}): TaskUpdatesOptions => ({
    baseUrl: server.baseUrl,
    transport,
    token: ADMIN,
    eventSource: EventSource as unknown as EventSourceConstructor,
    reconnectDelayMs: 100,
    maxReconnectDelayMs: 500,
    ...extra,
  });

  beforeAll(async () => {
    server = await startServer();
  });
  afterAll(async () => {
    await server.stop();
    removeInstance(server.instancePath);
  });

  it('delivers a posted update as a typed event, and closes the connection on unsubscribe', async () => {
    const rec = record(opts());
    await waitUntil(() => rec.states, (s) => s.at(-1) === 'open', 10_000, 'open');
    const answer = await postUpdate(server.baseUrl, { task_id: `${transport}-1`, title: 'hello', status: 'in_progress' });
    await waitUntil(() => rec.events, (e) => e.length > 0, 5_000, 'the event');
    expect(rec.events).toHaveLength(1);
    const event = rec.events[0]!;
    expect(event.id).toBe(answer.event_id);
    expect(event.type).toBe('task.created');
    expect(event.task_id).toBe(`${transport}-1`);
    expect(event.task).toMatchObject({ task_id: `${transport}-1`, title: 'hello', status: 'in_progress' });
    expect(typeof event.occurred_at).toBe('string');
    await until(async () => (await openStreams(server.baseUrl))[transport] === 1, 'the server to count the stream');
    rec.unsubscribe();
    expect(rec.states).toEqual(['closed', 'connecting', 'open', 'closed']);
    await until(async () => (await openStreams(server.baseUrl))[transport] === 0, 'the server to see it closed');
    expect(rec.error).toBeUndefined();
  });

  it('starts after lastEventId: replays the later events once, in order, then live ones', async () => {
    const first = await postUpdate(server.baseUrl, { task_id: `${transport}-2`, title: 'one' });
    const second = await postUpdate(server.baseUrl, { task_id: `${transport}-2`, title: 'two' });
    const third = await postUpdate(server.baseUrl, { task_id: `${transport}-3`, title: 'three' });
    const rec = record(opts({ lastEventId: first.event_id }));
    await waitUntil(() => rec.events, (e) => e.length >= 2, 5_000, 'the replay');
    const fourth = await postUpdate(server.baseUrl, { task_id: `${transport}-2`, title: 'four' });
    await waitUntil(() => rec.events, (e) => e.length >= 3, 5_000, 'the live event');
    expect(rec.events.map((e) => e.id)).toEqual([second.event_id, third.event_id, fourth.event_id]);
    expect(rec.events.map((e) => e.type)).toEqual(['task.updated', 'task.created', 'task.updated']);
    rec.unsubscribe();
  });

  it('keeps to taskIds', async () => {
    const rec = record(opts({ taskIds: [`${transport}-watched`] }));
    await until(isOpen(rec), 'open');
    await postUpdate(server.baseUrl, { task_id: `${transport}-other` });
    const watched = await postUpdate(server.baseUrl, { task_id: `${transport}-watched` });
    await waitUntil(() => rec.events, (e) => e.length > 0, 5_000, 'the watched event');
    const later = await postUpdate(server.baseUrl, { task_id: `${transport}-watched`, status: 'done' });
    await waitUntil(() => rec.events, (e) => e.length > 1, 5_000, 'the second watched event');
    expect(rec.events.map((e) => e.id)).toEqual([watched.event_id, later.event_id]);
    rec.unsubscribe();
  });

  it('ends with a TaskUpdatesError when the token is refused', async () => {
    const rec = record(opts({ token: makeToken('admin@example.com', ['updates:read'], 3600, 'another-secret-0123456789abcdef0123456789') }));
    await until(() => rec.error !== undefined, 'the error');
    expect(rec.error).toBeInstanceOf(TaskUpdatesError);
    const err = rec.error as TaskUpdatesError;
    expect(err.kind).toBe('unauthorized');
    expect(err.transport).toBe(transport);
    if (transport === 'sse') expect(err.status).toBe(401);
    expect(rec.states.at(-1)).toBe('closed');
    expect(rec.states).not.toContain('open');
  });

  it('ends with a TaskUpdatesError without a token, and a forbidden one without the scope', async () => {
    const none = record(opts({ token: undefined }));
    const weak = record(opts({ token: makeToken('someone@example.com', ['tasks:read']) }));
    await until(() => none.error !== undefined && weak.error !== undefined, 'both errors');
    expect((none.error as TaskUpdatesError).kind).toBe('unauthorized');
    expect((weak.error as TaskUpdatesError).kind).toBe('forbidden');
    if (transport === 'sse') expect((weak.error as TaskUpdatesError).status).toBe(403);
  });

  it('asks the token function again on reconnect: an expired token is replaced without a gap', async () => {
    let token = makeToken('admin@example.com', ['updates:read', 'admin'], 2);
    const rec = record(opts({ token: () => token }));
    await until(isOpen(rec), 'open');
    const first = await postUpdate(server.baseUrl, { task_id: `${transport}-exp`, title: 'first' });
    await waitUntil(() => rec.events, (e) => e.length === 1, 5_000, 'the first event');
    token = makeToken('admin@example.com', ['updates:read', 'admin'], 3600);
    // The server closes the stream when the short token expires; the client comes back with the new one.
    await until(() => rec.states.includes('renewing'), 'the server to close the expired stream');
    await until(isOpen(rec), 'the reconnect');
    const second = await postUpdate(server.baseUrl, { task_id: `${transport}-exp`, title: 'second' });
    await waitUntil(() => rec.events, (e) => e.length === 2, 5_000, 'the second event');
    expect(rec.events.map((e) => e.id)).toEqual([first.event_id, second.event_id]);
    expect(rec.error).toBeUndefined();
    rec.unsubscribe();
  });

  it('renews an expired token from an async token function and resumes with no gap and no duplicate', async () => {
    let calls = 0;
    let release: () => void = () => undefined;
    const renewed = new Promise<void>((ok) => (release = ok));
    const rec = record(
      opts({
        token: async () => {
          calls += 1;
          if (calls === 1) return makeToken('admin@example.com', ['updates:read', 'admin'], 2);
          await renewed; // the login service takes its time: events are posted meanwhile
          return makeToken('admin@example.com', ['updates:read', 'admin'], 3600);
        },
      }),
    );
    await until(isOpen(rec), 'open');
    const before = await postUpdate(server.baseUrl, { task_id: `${transport}-renew`, title: 'before' });
    await waitUntil(() => rec.events, (e) => e.length === 1, 5_000, 'the first event');
    await until(() => rec.states.at(-1) === 'renewing' && calls === 2, 'the renewal after the token expired');
    const away = [
      await postUpdate(server.baseUrl, { task_id: `${transport}-renew`, title: 'while renewing' }),
      await postUpdate(server.baseUrl, { task_id: `${transport}-other`, title: 'also while renewing' }),
    ];
    release();
    await until(isOpen(rec), 'the reconnect with the fresh token');
    const after = await postUpdate(server.baseUrl, { task_id: `${transport}-renew`, title: 'after' });
    await waitUntil(() => rec.events, (e) => e.length >= 4, 5_000, 'the missed and the new events');
    expect(rec.events.map((e) => e.id)).toEqual([before, ...away, after].map((a) => a.event_id));
    expect(calls).toBe(2);
    expect(rec.states.slice(1)).toEqual(['connecting', 'open', 'renewing', 'open']);
    expect(rec.failures).toEqual([]);
    expect(rec.error).toBeUndefined();
    rec.unsubscribe();
  });

  it('resumes from where the stream started when it saw no event before its token expired', async () => {
    let calls = 0;
    let release: () => void = () => undefined;
    const renewed = new Promise<void>((ok) => (release = ok));
    const earlier = await postUpdate(server.baseUrl, { task_id: `${transport}-quiet`, title: 'before the stream' });
    const rec = record(
      opts({
        token: async () => {
          calls += 1;
          if (calls === 1) return makeToken('admin@example.com', ['updates:read', 'admin'], 2);
          await renewed;
          return ADMIN;
        },
      }),
    );
    await until(() => rec.states.at(-1) === 'renewing' && calls === 2, 'the renewal after the token expired');
    expect(rec.events).toEqual([]);
    const away = [
      await postUpdate(server.baseUrl, { task_id: `${transport}-quiet`, title: 'while renewing' }),
      await postUpdate(server.baseUrl, { task_id: `${transport}-quiet`, title: 'also while renewing' }),
    ];
    release();
    await waitUntil(() => rec.events, (e) => e.length >= 2, 10_000, 'the events made while renewing');
    expect(rec.events.map((e) => e.id)).toEqual(away.map((a) => a.event_id));
    expect(earlier.event_id).toBeLessThan(away[0]!.event_id);
    rec.unsubscribe();
  });

  it('asks the token function once more when its token is refused, then gives up', async () => {
    const expired = makeToken('admin@example.com', ['updates:read', 'admin'], -10);
    const answers = [expired, ADMIN];
    let calls = 0;
    const rec = record(opts({ token: () => answers[Math.min(calls++, answers.length - 1)] }));
    await until(isOpen(rec), 'open with the second token');
    expect(calls).toBe(2);
    expect(rec.states).toContain('renewing');
    rec.unsubscribe();
    let stale = 0;
    const refused = record(opts({ token: () => (stale++, expired) }));
    await until(() => refused.error !== undefined, 'the error');
    expect(refused.error).toMatchObject({ kind: 'unauthorized', transport });
    expect(stale).toBe(2);
  });

  it('ends with unauthorized when the token expires and no new one comes', async () => {
    const rec = record(opts({ token: makeToken('admin@example.com', ['updates:read', 'admin'], 2) }));
    await until(isOpen(rec), 'open');
    await until(() => rec.error !== undefined, 'the error', 15_000);
    expect(rec.error).toMatchObject({ kind: 'unauthorized', transport });
    expect((rec.error as Error).message).toMatch(/expired/);
    expect(rec.states.at(-1)).toBe('closed');
  });

  it('shows a reader only its own tasks', async () => {
    const rec = record(opts({ token: makeToken('alice@example.com', ['updates:read']) }));
    await until(isOpen(rec), 'open');
    await postUpdate(server.baseUrl, { task_id: `${transport}-bob`, user_email: 'bob@example.com' });
    const mine = await postUpdate(server.baseUrl, { task_id: `${transport}-alice`, user_email: 'alice@example.com' });
    await waitUntil(() => rec.events, (e) => e.length > 0, 5_000, "alice's event");
    expect(rec.events.map((e) => e.id)).toEqual([mine.event_id]);
    rec.unsubscribe();
  });
});

describe.each(TRANSPORTS)('a server restart over %s', (transport) => {
  it('reconnects by itself and delivers the events made while it was away, once each, in order', async () => {
    const first = await startServer();
    const { port, instancePath } = first;
    let current: Server | undefined = first;
    try {
      const rec = record({
        baseUrl: first.baseUrl,
        transport,
        token: ADMIN,
        eventSource: EventSource as unknown as EventSourceConstructor,
        reconnectDelayMs: 100,
        maxReconnectDelayMs: 300,
      });
      await until(isOpen(rec), 'open');
      const before = await postUpdate(first.baseUrl, { task_id: 'r-1', title: 'before' });
      await waitUntil(() => rec.events, (e) => e.length === 1, 5_000, 'the first event');
      await first.stop();
      current = undefined;
      await until(() => rec.states.at(-1) === 'reconnecting', 'reconnecting');
      // While the client's server is down, another process on the same database takes writes.
      const other = await startServer({ instancePath });
      current = other;
      const missed = [
        await postUpdate(other.baseUrl, { task_id: 'r-1', title: 'while away' }),
        await postUpdate(other.baseUrl, { task_id: 'r-2', title: 'also while away' }),
      ];
      await other.stop();
      current = undefined;
      expect(rec.events).toHaveLength(1);
      const again = await startServer({ port, instancePath });
      current = again;
      await until(isOpen(rec), 'the reconnect');
      const after = await postUpdate(again.baseUrl, { task_id: 'r-1', title: 'after' });
      await waitUntil(() => rec.events, (e) => e.length >= 4, 10_000, 'the missed and the new events');
      expect(rec.events.map((e) => e.id)).toEqual([before, ...missed, after].map((a) => a.event_id));
      expect(rec.events.map((e) => e.task.title)).toEqual(['before', 'while away', 'also while away', 'after']);
      expect(rec.failures.length).toBeGreaterThan(0);
      expect(rec.error).toBeUndefined();
      rec.unsubscribe();
    } finally {
      await current?.stop();
      removeInstance(instancePath);
    }
  });
});
