/** The SSE side's own bookkeeping, with a scripted EventSource: the URL it resumes with, duplicates, probes. */
import { afterEach, describe, expect, it, vi } from 'vitest';

import { type EventSourceConstructor, type TaskEvent, TaskUpdatesError, taskUpdates } from '../src/index.js';

class FakeEventSource {
  static made: FakeEventSource[] = [];
  onopen: ((e: Event) => void) | null = null;
  onmessage: ((e: MessageEvent) => void) | null = null;
  onerror: ((e: Event) => void) | null = null;
  listeners = new Map<string, (e: Event) => void>();
  closed = false;
  constructor(readonly url: string) {
    FakeEventSource.made.push(this);
  }
  addEventListener(type: string, listener: (e: Event) => void): void {
    this.listeners.set(type, listener);
  }
  close(): void {
    this.closed = true;
  }
  open(): void {
    this.onopen?.(new Event('open'));
  }
  start(lastEventId: number): void {
    const data = JSON.stringify({ last_event_id: lastEventId });
    this.listeners.get('stream_start')?.(new MessageEvent('stream_start', { data, lastEventId: String(lastEventId) }));
  }
  send(id: number, taskId = 't'): void {
    const payload = { id, type: 'task.updated', task_id: taskId, task: { task_id: taskId }, occurred_at: 'x' };
    this.onmessage?.(new MessageEvent('message', { data: JSON.stringify(payload), lastEventId: String(id) }));
  }
  fail(): void {
    this.onerror?.(new Event('error'));
  }
}

const tick = (ms = 0) => new Promise((ok) => setTimeout(ok, ms));

async function waitForSource(count: number): Promise<void> {
  for (let n = 0; FakeEventSource.made.length < count; n++) {
    if (n > 500) throw new Error(`no EventSource number ${count}`);
    await tick(2);
  }
}

describe('SSE resume bookkeeping', () => {
  it('drops events at or below the last id and resumes with ?last_event_id= and the token', async () => {
    FakeEventSource.made = [];
    const seen: TaskEvent[] = [];
    const sub = taskUpdates({
      baseUrl: 'http://api.test/',
      transport: 'sse',
      token: 'tok',
      taskIds: ['t'],
      eventSource: FakeEventSource as unknown as EventSourceConstructor,
      reconnectDelayMs: 1,
    }).subscribe((e) => seen.push(e));
    await tick();
    const first = FakeEventSource.made[0]!;
    expect(first.url).toBe('http://api.test/task_updates?task_id=t&access_token=tok&stream_start=1');
    first.open();
    first.send(1);
    first.send(2);
    first.send(2);
    first.send(1);
    first.fail();
    expect(first.closed).toBe(true);
    await tick(20);
    const second = FakeEventSource.made[1]!;
    expect(second.url).toBe('http://api.test/task_updates?task_id=t&access_token=tok&last_event_id=2&stream_start=1');
    second.open();
    second.send(2);
    second.send(3);
    expect(seen.map((e) => e.id)).toEqual([1, 2, 3]);
    sub.unsubscribe();
    expect(second.closed).toBe(true);
  });

  it('resumes from the stream_start id when it saw no event', async () => {
    FakeEventSource.made = [];
    const stream = taskUpdates({
      baseUrl: 'http://api.test',
      transport: 'sse',
      eventSource: FakeEventSource as unknown as EventSourceConstructor,
      reconnectDelayMs: 1,
    });
    const sub = stream.subscribe();
    await tick();
    const first = FakeEventSource.made[0]!;
    first.open();
    first.start(41);
    expect(stream.lastEventId).toBe(41);
    first.fail();
    await tick(20);
    expect(FakeEventSource.made[1]!.url).toBe('http://api.test/task_updates?last_event_id=41&stream_start=1');
    sub.unsubscribe();
  });

  it('probes with fetch when a stream fails before it opens; on a 401 asks the token function once more', async () => {
    FakeEventSource.made = [];
    const probed: string[] = [];
    const fakeFetch = (async (url: string) => {
      probed.push(url);
      return new Response(JSON.stringify({ error: { code: 'unauthorized', message: 'the token has expired' } }), {
        status: 401,
        headers: { 'Content-Type': 'application/json' },
      });
    }) as unknown as typeof fetch;
    let asked = 0;
    const error = await new Promise<unknown>((ok) => {
      taskUpdates({
        baseUrl: 'http://api.test',
        transport: 'sse',
        token: async () => `old${++asked}`,
        eventSource: FakeEventSource as unknown as EventSourceConstructor,
        fetch: fakeFetch,
      }).subscribe({ error: ok });
      void (async () => {
        for (let n = 1; n <= 2; n++) {
          await waitForSource(n);
          FakeEventSource.made[n - 1]!.fail();
        }
      })();
    });
    expect(asked).toBe(2);
    expect(probed).toEqual([
      'http://api.test/task_updates?access_token=old1&stream_start=1',
      'http://api.test/task_updates?access_token=old2&stream_start=1',
    ]);
    expect(error).toBeInstanceOf(TaskUpdatesError);
    expect(error).toMatchObject({ kind: 'unauthorized', status: 401, code: 'unauthorized', transport: 'sse' });
  });

  it('keeps retrying while the server is unreachable', async () => {
    FakeEventSource.made = [];
    let calls = 0;
    const fakeFetch = (async () => {
      calls += 1;
      throw new TypeError('fetch failed');
    }) as unknown as typeof fetch;
    const stream = taskUpdates({
      baseUrl: 'http://api.test',
      transport: 'sse',
      eventSource: FakeEventSource as unknown as EventSourceConstructor,
      fetch: fakeFetch,
      reconnectDelayMs: 1,
      maxReconnectDelayMs: 2,
    });
    const states: string[] = [];
    stream.state$.subscribe((s) => states.push(s));
    const sub = stream.subscribe();
    await tick();
    for (let i = 0; i < 3; i++) {
      FakeEventSource.made.at(-1)!.fail();
      await tick(20);
    }
    expect(FakeEventSource.made).toHaveLength(4);
    expect(calls).toBe(3);
    expect(states).toEqual(['closed', 'connecting']);
    FakeEventSource.made.at(-1)!.open();
    expect(states).toEqual(['closed', 'connecting', 'open']);
    sub.unsubscribe();
    expect(states.at(-1)).toBe('closed');
  });
});

describe('reconnect delays', () => {
  afterEach(() => vi.restoreAllMocks());

  // What the client waits before it comes back after a stream that was open fails, with Math.random() at `random`.
  async function delayAfterAFailure(random: number): Promise<number> {
    FakeEventSource.made = [];
    vi.spyOn(Math, 'random').mockReturnValue(random);
    const sub = taskUpdates({
      baseUrl: 'http://api.test',
      transport: 'sse',
      eventSource: FakeEventSource as unknown as EventSourceConstructor,
      reconnectDelayMs: 1000,
    }).subscribe();
    await tick();
    FakeEventSource.made[0]!.open();
    const timeouts = vi.spyOn(globalThis, 'setTimeout');
    FakeEventSource.made[0]!.fail();
    const delays = timeouts.mock.calls.map(([, ms]) => ms);
    sub.unsubscribe();
    return delays[0] as number;
  }

  it('spreads a reconnect over half to one and a half times reconnectDelayMs, as socket.io-client does', async () => {
    // After a server restart every client loses its stream at once: a fixed delay would bring them all back together.
    expect(await delayAfterAFailure(0)).toBe(500);
    expect(await delayAfterAFailure(0.5)).toBe(1000);
    expect(await delayAfterAFailure(0.999)).toBe(1499);
  });
});

describe('task ids', () => {
  it('refuses what the server refuses, "." and ".." included, and takes "..."', () => {
    const make = (id: string) => () => taskUpdates({ baseUrl: 'http://x', transport: 'sse', taskIds: [id] });
    for (const bad of ['.', '..', '', 'a b', 'x'.repeat(65)]) expect(make(bad)).toThrow(TypeError);
    for (const good of ['...', '.a', 'a.', '123', 'x'.repeat(64)]) expect(make(good)).not.toThrow();
  });
});
