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
 * (the server is down, the network dropped) show on `state$` and `failures$`; an expired token is
 * renewed by asking the token function again (`state$` shows `renewing`); failures it cannot retry
 * (401 with no fresher token, 403, a refused Socket.IO connection) end the stream with a TaskUpdatesError.
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

  /** The id of the last event delivered, or where the stream started (the lastEventId option before either). */
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
      started: (id) => {
        if (this.last === null || id > this.last) this.last = id;
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
  /** The server said where the stream starts (`stream_start`), before any event. */
  started(id: number): void;
  error(err: TaskUpdatesError): void;
  state(state: ConnectionState): void;
  failure(err: Error): void;
}

/** The token of the moment: the option itself, or what its function gives (awaited). */
async function currentToken(token: TokenSource): Promise<string | undefined> {
  const value = typeof token === 'function' ? await token() : token;
  return value || undefined;
}

/**
 * Whether a JWT's `exp` has passed, give or take marginMs for the clocks; false for a token that is no JWT
 * or has no `exp` (the client cannot tell: it reconnects as after any drop).
 */
function tokenExpired(token: string | undefined, marginMs = 5000): boolean {
  const payload = token?.split('.')[1];
  if (!payload) return false;
  try {
    const exp = (JSON.parse(atob(payload.replace(/-/g, '+').replace(/_/g, '/'))) as { exp?: unknown }).exp;
    return typeof exp === 'number' && exp * 1000 <= Date.now() + marginMs;
  } catch {
    return false;
  }
}

/**
 * When a token is refused, the token function is asked once more before the client gives up: it may hold a
 * token that expired a moment ago and renew it on the next call. A token given as a string is final.
 */
class Renewal {
  private tried = false;

  constructor(private readonly token: TokenSource) {}

  /** Whether to try again with a fresh token after a refusal (once until the next successful connect). */
  retry(): boolean {
    if (typeof this.token !== 'function' || this.tried) return false;
    this.tried = true;
    return true;
  }

  connected(): void {
    this.tried = false;
  }
}

function asError(err: unknown, what: string): Error {
  return err instanceof Error ? err : new Error(`${what}: ${String(err)}`);
}

function startId(payload: unknown): number | null {
  const id = (payload as { last_event_id?: unknown } | null)?.last_event_id;
  return typeof id === 'number' && Number.isInteger(id) && id >= 0 ? id : null;
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

/** A delay spread at random over half to one and a half times itself, as socket.io-client's randomizationFactor 0.5. */
function spread(ms: number): number {
  return Math.round(ms * (0.5 + Math.random()));
}

// -- Socket.IO ------------------------------------------------------------------------------------

function openSocketIo(options: TaskUpdatesOptions, hooks: Hooks): () => void {
  let last = hooks.start;
  let sentToken: string | undefined;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  const renewal = new Renewal(options.token);
  const accept = wanted(options);
  const reconnectDelay = options.reconnectDelayMs ?? 1000;
  const socket: Socket = io(trimBase(options.baseUrl), {
    autoConnect: false,
    forceNew: true,
    // A function: every connect and reconnect asks for the token of the moment and sends the last event id seen.
    auth: (cb) => {
      currentToken(options.token).then(
        (token) => {
          sentToken = token;
          cb({ token, last_event_id: last ?? undefined });
        },
        (err: unknown) => {
          hooks.failure(asError(err, 'the token function failed'));
          socket.io.engine?.close(); // the manager tries again after its reconnect delay
        },
      );
    },
    reconnectionDelay: reconnectDelay,
    reconnectionDelayMax: options.maxReconnectDelayMs ?? 5000,
    ...(options.socketTransports ? { transports: options.socketTransports } : {}),
  });
  const subs = new Subscription();
  let opened = false;
  hooks.state('connecting');

  subs.add(
    fromEvent(socket, 'connect').subscribe(() => {
      opened = true;
      renewal.connected();
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
    // The first event of every connection: where its stream starts, to resume from before any event came.
    fromEvent(socket, 'stream_start', (payload: unknown) => payload).subscribe((payload) => {
      const start = startId(payload);
      if (start === null || (last !== null && start <= last)) return;
      last = start;
      hooks.started(start);
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
      if (socket.active) {
        hooks.failure(err);
        hooks.state(opened ? 'reconnecting' : 'connecting');
        return;
      }
      // The server refused the connection.
      const code = err.data?.code;
      if (code === 'unauthorized' && renewal.retry()) {
        hooks.state('renewing');
        socket.connect(); // auth() asks the token function again
      } else if (code === 'unavailable') {
        // Full, or the identity provider's keys are out of reach: worth another try later.
        hooks.failure(err);
        hooks.state(opened ? 'reconnecting' : 'connecting');
        retryTimer = setTimeout(() => socket.connect(), spread(reconnectDelay));
      } else {
        hooks.error(new TaskUpdatesError(err.message, kindOf(undefined, code), 'socketio', undefined, code));
      }
    }),
  );
  subs.add(
    // 'disconnect' has two arguments (reason, description): keep the reason.
    fromEvent(socket, 'disconnect', (reason: string) => reason).subscribe((reason) => {
      if (reason === 'io client disconnect') return;
      hooks.state(tokenExpired(sentToken) ? 'renewing' : 'reconnecting');
      // The server ended it, e.g. the token expired: socket.io-client does not come back by itself.
      if (reason === 'io server disconnect') socket.connect();
    }),
  );
  socket.connect();
  return () => {
    if (retryTimer !== undefined) clearTimeout(retryTimer);
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
  const renewal = new Renewal(options.token);
  let last = hooks.start;
  let source: EventSource | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let probe: AbortController | null = null;
  let failures = 0;
  let everOpened = false;
  let done = false;

  const url = (token: string | undefined): string => {
    const params = new URLSearchParams();
    for (const taskId of options.taskIds ?? []) params.append('task_id', taskId);
    if (token) params.set('access_token', token);
    if (last !== null) params.set('last_event_id', String(last));
    params.set('stream_start', '1');
    return `${trimBase(options.baseUrl)}/task_updates?${params.toString()}`;
  };

  const fail = (err: TaskUpdatesError): void => {
    done = true;
    hooks.error(err);
  };

  // Every wait but a renewal's is spread at random, so clients that lost the server together come back spread out.
  const schedule = (delayMs?: number, state?: ConnectionState): void => {
    const delay = delayMs ?? spread(Math.min(maxDelay, baseDelay * 2 ** Math.max(0, failures - 1)));
    hooks.state(state ?? (everOpened ? 'reconnecting' : 'connecting'));
    timer = setTimeout(() => void connect(), delay);
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
    if (status === 401 && renewal.retry()) {
      schedule(0, 'renewing'); // connect() asks the token function again
      return;
    }
    if (status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429) {
      fail(new TaskUpdatesError(`SSE ${status}: ${message}`, kindOf(status, code), 'sse', status, code));
      return;
    }
    if (status !== undefined && status !== 200) hooks.failure(new Error(`SSE ${status}: ${message}`));
    // Never before the server's Retry-After, and up to half of it later.
    schedule(retryAfter !== undefined ? retryAfter * 1000 * (1 + Math.random() / 2) : undefined);
  };

  const connect = async (): Promise<void> => {
    timer = undefined;
    if (done) return;
    let token: string | undefined;
    try {
      token = await currentToken(options.token);
    } catch (err) {
      if (done) return;
      failures += 1;
      hooks.failure(asError(err, 'the token function failed'));
      schedule();
      return;
    }
    if (done) return;
    const target = url(token);
    const es = new ES(target);
    source = es;
    let opened = false;
    es.onopen = () => {
      opened = true;
      everOpened = true;
      failures = 0;
      renewal.connected();
      hooks.state('open');
    };
    // The opening block names where the stream starts (?stream_start=1), to resume from before any event came.
    es.addEventListener('stream_start', (message: Event) => {
      let start: number | null = null;
      try {
        start = startId(JSON.parse(String((message as MessageEvent).data)));
      } catch {
        return;
      }
      if (start === null || (last !== null && start <= last)) return;
      last = start;
      hooks.started(start);
    });
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
      // Close it ourselves: our reconnect carries ?last_event_id= and the token of the moment.
      es.close();
      if (source !== es || done) return;
      source = null;
      if (opened && tokenExpired(token)) {
        schedule(0, 'renewing'); // the server ended the stream as the token expired: come back with a fresh one
        return;
      }
      failures += 1;
      if (opened) {
        hooks.failure(new Error('the event stream was interrupted'));
        schedule(spread(Math.min(baseDelay, maxDelay)));
      } else {
        hooks.state(everOpened ? 'reconnecting' : 'connecting');
        void diagnose(target);
      }
    };
  };

  hooks.state('connecting');
  void connect();
  return () => {
    done = true;
    if (timer !== undefined) clearTimeout(timer);
    probe?.abort();
    source?.close();
    source = null;
  };
}
