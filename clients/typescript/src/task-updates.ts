import {
  BehaviorSubject,
  Observable,
  Subject,
  Subscription,
  distinctUntilChanged,
  fromEvent,
  type Subscriber,
  type TeardownLogic,
} from 'rxjs';
import { io, type Socket } from 'socket.io-client';

import {
  type ConnectionState,
  type TaskEvent,
  type TaskUpdatesErrorKind,
  type TaskUpdatesOptions,
  type TokenSource,
  TaskUpdatesError,
} from './types.js';

// The server's rule: 1-64 letters, digits, '.', '_' or '-', other than '.' and '..'.
const TASK_ID = /^(?!\.{1,2}$)[A-Za-z0-9._-]{1,64}$/;

/**
 * A cold stream of task events: every subscription opens its own connection (Socket.IO or SSE) and
 * closes it on unsubscribe. It remembers the id of the last event it delivered and resumes after it
 * on every reconnect, so a subscriber sees each event once, in id order. Failures the client retries
 * (the server is down, the network dropped) show on `state$` and `failures$`; failures it cannot
 * retry (401, 403, a refused Socket.IO connection) end the stream with a TaskUpdatesError.
 */
export class TaskUpdateStream extends Observable<TaskEvent> {
  /** The connection state of the most recent subscription. */
  readonly state$: Observable<ConnectionState>;
  /** Transient failures the client retries after (for display: "server unreachable"). */
  readonly failures$: Observable<Error>;

  private readonly core: StreamCore;

  constructor(readonly options: TaskUpdatesOptions) {
    const core = new StreamCore(options);
    super((subscriber) => core.open(subscriber));
    this.core = core;
    this.state$ = core.state.pipe(distinctUntilChanged());
    this.failures$ = core.failures.asObservable();
  }

  /** The stream itself, for those who prefer `const { events$, state$ } = taskUpdates(...)`. */
  get events$(): Observable<TaskEvent> {
    return this;
  }

  /** The id of the last event delivered (or the lastEventId option before the first). */
  get lastEventId(): number | null {
    return this.core.last;
  }
}

class StreamCore {
  readonly state = new BehaviorSubject<ConnectionState>('closed');
  readonly failures = new Subject<Error>();
  last: number | null;

  constructor(private readonly options: TaskUpdatesOptions) {
    for (const id of options.taskIds ?? []) {
      if (!TASK_ID.test(id)) throw new TypeError(`invalid task id ${JSON.stringify(id)}`);
    }
    if (options.transport !== 'sse' && options.transport !== 'socketio') {
      throw new TypeError(`transport must be 'socketio' or 'sse', not ${JSON.stringify(options.transport)}`);
    }
    this.last = options.lastEventId ?? null;
  }

  open(subscriber: Subscriber<TaskEvent>): TeardownLogic {
    const hooks: Hooks = {
      start: this.last,
      next: (event) => {
        if (this.last === null || event.id > this.last) this.last = event.id;
        subscriber.next(event);
      },
      error: (err) => subscriber.error(err),
      state: (s) => this.state.next(s),
      failure: (err) => this.failures.next(err),
    };
    const close = this.options.transport === 'sse' ? openSse(this.options, hooks) : openSocketIo(this.options, hooks);
    return () => {
      close();
      this.state.next('closed');
    };
  }
}

/** Task events over Socket.IO or SSE; see TaskUpdateStream. */
export function taskUpdates(options: TaskUpdatesOptions): TaskUpdateStream {
  return new TaskUpdateStream(options);
}

interface Hooks {
  start: number | null;
  next(event: TaskEvent): void;
  error(err: TaskUpdatesError): void;
  state(state: ConnectionState): void;
  failure(err: Error): void;
}

function resolveToken(token: TokenSource): string | undefined {
  const value = typeof token === 'function' ? token() : token;
  return value || undefined;
}

function trimBase(baseUrl: string): string {
  return baseUrl.replace(/\/+$/, '');
}

function wanted(options: TaskUpdatesOptions): (event: TaskEvent) => boolean {
  const ids = new Set(options.taskIds ?? []);
  return (event) => ids.size === 0 || ids.has(event.task_id);
}

function isTaskEvent(value: unknown): value is TaskEvent {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v['id'] === 'number' && typeof v['type'] === 'string' && typeof v['task_id'] === 'string';
}

function kindOf(status: number | undefined, code: string | undefined): TaskUpdatesErrorKind {
  if (status === 401 || code === 'unauthorized') return 'unauthorized';
  if (status === 403 || code === 'forbidden') return 'forbidden';
  if (status !== undefined && status >= 400 && status < 500) return 'bad_request';
  return 'refused';
}

// -- Socket.IO ------------------------------------------------------------------------------------

function openSocketIo(options: TaskUpdatesOptions, hooks: Hooks): () => void {
  let last = hooks.start;
  const accept = wanted(options);
  const socket: Socket = io(trimBase(options.baseUrl), {
    autoConnect: false,
    forceNew: true,
    // A function, so that every reconnect sends the latest token and the last event id seen.
    auth: (cb) => cb({ token: resolveToken(options.token), last_event_id: last ?? undefined }),
    reconnectionDelay: options.reconnectDelayMs ?? 1000,
    reconnectionDelayMax: options.maxReconnectDelayMs ?? 5000,
    ...(options.socketTransports ? { transports: options.socketTransports } : {}),
  });
  const subs = new Subscription();
  let opened = false;
  hooks.state('connecting');

  subs.add(
    fromEvent(socket, 'connect').subscribe(() => {
      opened = true;
      hooks.state('open');
      for (const taskId of options.taskIds ?? []) {
        socket.emit('subscribe', { task_id: taskId }, (ack: { ok?: boolean; error?: string } | undefined) => {
          if (ack && ack.ok === false) {
            hooks.error(new TaskUpdatesError(ack.error ?? 'subscribe refused', 'bad_request', 'socketio'));
          }
        });
      }
    }),
  );
  subs.add(
    fromEvent(socket, 'task_update', (payload: unknown) => payload).subscribe((payload) => {
      if (!isTaskEvent(payload)) return;
      if (last !== null && payload.id <= last) return; // already delivered (a replay overlap)
      last = payload.id;
      if (accept(payload)) hooks.next(payload);
    }),
  );
  subs.add(
    fromEvent(socket, 'connect_error', (err: Error & { data?: { code?: string } }) => err).subscribe((err) => {
      if (!socket.active) {
        // The server refused the connection (bad token, missing scope, too many streams): no retry.
        const code = err.data?.code;
        hooks.error(new TaskUpdatesError(err.message, kindOf(undefined, code), 'socketio', undefined, code));
        return;
      }
      hooks.failure(err);
      hooks.state(opened ? 'reconnecting' : 'connecting');
    }),
  );
  subs.add(
    // 'disconnect' has two arguments (reason, description): keep the reason.
    fromEvent(socket, 'disconnect', (reason: string) => reason).subscribe((reason) => {
      if (reason === 'io client disconnect') return;
      hooks.state('reconnecting');
      if (reason === 'io server disconnect') socket.connect(); // e.g. the token expired; connect_error tells
    }),
  );
  socket.connect();
  return () => {
    subs.unsubscribe();
    socket.disconnect();
  };
}

// -- Server-Sent Events ---------------------------------------------------------------------------

function openSse(options: TaskUpdatesOptions, hooks: Hooks): () => void {
  const ES = options.eventSource ?? (globalThis as { EventSource?: TaskUpdatesOptions['eventSource'] }).EventSource;
  const fetchImpl = options.fetch ?? globalThis.fetch?.bind(globalThis);
  if (!ES) {
    hooks.error(new TaskUpdatesError('no EventSource here: pass options.eventSource', 'unsupported', 'sse'));
    return () => undefined;
  }
  const baseDelay = options.reconnectDelayMs ?? 1000;
  const maxDelay = options.maxReconnectDelayMs ?? 10000;
  const accept = wanted(options);
  let last = hooks.start;
  let source: EventSource | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let probe: AbortController | null = null;
  let failures = 0;
  let everOpened = false;
  let done = false;

  const url = (): string => {
    const params = new URLSearchParams();
    for (const taskId of options.taskIds ?? []) params.append('task_id', taskId);
    const token = resolveToken(options.token);
    if (token) params.set('access_token', token);
    if (last !== null) params.set('last_event_id', String(last));
    const query = params.toString();
    return `${trimBase(options.baseUrl)}/task_updates${query ? `?${query}` : ''}`;
  };

  const fail = (err: TaskUpdatesError): void => {
    done = true;
    hooks.error(err);
  };

  const schedule = (delayMs?: number): void => {
    const delay = delayMs ?? Math.min(maxDelay, baseDelay * 2 ** Math.max(0, failures - 1));
    hooks.state(everOpened ? 'reconnecting' : 'connecting');
    timer = setTimeout(connect, delay);
  };

  // EventSource does not tell why it failed: ask the same URL with fetch, and give up on a 4xx.
  const diagnose = async (target: string): Promise<void> => {
    const controller = new AbortController();
    probe = controller;
    let status: number | undefined;
    let message = '';
    let code: string | undefined;
    let retryAfter: number | undefined;
    try {
      if (!fetchImpl) throw new Error('no fetch');
      const response = await fetchImpl(target, {
        headers: { Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: controller.signal,
      });
      status = response.status;
      if (!response.ok) {
        retryAfter = Number(response.headers.get('Retry-After')) || undefined;
        const body = (await response.json().catch(() => null)) as { error?: { code?: string; message?: string } } | null;
        message = body?.error?.message ?? response.statusText;
        code = body?.error?.code;
      }
    } catch (err) {
      if (done) return;
      hooks.failure(err instanceof Error ? err : new Error(String(err)));
    } finally {
      controller.abort(); // a 200 answer is a live stream: do not keep it open
      if (probe === controller) probe = null;
    }
    if (done) return;
    if (status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429) {
      fail(new TaskUpdatesError(`SSE ${status}: ${message}`, kindOf(status, code), 'sse', status, code));
      return;
    }
    if (status !== undefined && status !== 200) hooks.failure(new Error(`SSE ${status}: ${message}`));
    schedule(retryAfter !== undefined ? retryAfter * 1000 : undefined);
  };

  const connect = (): void => {
    timer = undefined;
    if (done) return;
    const target = url();
    const es = new ES(target);
    source = es;
    let opened = false;
    es.onopen = () => {
      opened = true;
      everOpened = true;
      failures = 0;
      hooks.state('open');
    };
    es.onmessage = (message: MessageEvent) => {
      let payload: unknown;
      try {
        payload = JSON.parse(String(message.data));
      } catch {
        return;
      }
      if (!isTaskEvent(payload)) return;
      if (last !== null && payload.id <= last) return; // already delivered
      last = payload.id;
      if (accept(payload)) hooks.next(payload);
    };
    es.onerror = () => {
      // Close it ourselves: our reconnect carries ?last_event_id= and a fresh token.
      es.close();
      if (source !== es || done) return;
      source = null;
      failures += 1;
      if (opened) {
        hooks.failure(new Error('the event stream was interrupted'));
        schedule(Math.min(baseDelay, maxDelay));
      } else {
        hooks.state(everOpened ? 'reconnecting' : 'connecting');
        void diagnose(target);
      }
    };
  };

  hooks.state('connecting');
  connect();
  return () => {
    done = true;
    if (timer !== undefined) clearTimeout(timer);
    probe?.abort();
    source?.close();
    source = null;
  };
}
