/** The wire types of the task notification service (identical on SSE, Socket.IO and the history API). */

export type TaskStatus = 'open' | 'in_progress' | 'done' | 'cancelled';

export interface Task {
  task_id: string;
  user_email: string;
  title: string;
  description: string;
  status: TaskStatus;
  created_at: string;
  updated_at: string;
}

export type TaskEventType = 'task.created' | 'task.updated' | 'task.deleted';

export interface TaskEvent {
  /** Event ids increase strictly; a client resumes after the last one it saw. */
  id: number;
  type: TaskEventType;
  task_id: string;
  task: Task;
  occurred_at: string;
}

export type Transport = 'socketio' | 'sse';

/**
 * - `connecting`: the first connection attempt is under way
 * - `open`: connected, events flow
 * - `reconnecting`: the connection dropped or an attempt failed; the client retries by itself
 * - `renewing`: the token expired (or was refused): the client asks the token function for a fresh one and
 *   reconnects, resuming after the last event
 * - `closed`: not connected (never subscribed, unsubscribed, or failed for good)
 */
export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'renewing' | 'closed';

/** A token, as such or as the answer of the token function. */
export type Token = string | null | undefined;

/**
 * A token, or a function asked for the current one before every connect and reconnect (it may return a
 * Promise, e.g. an OpenID Connect library's `getAccessToken()`): a fresh token is asked for when the server
 * ends a stream because its token expired, or refuses a token.
 */
export type TokenSource = Token | (() => Token | PromiseLike<Token>);

/** The EventSource constructor to use (the browser's by default; e.g. the `eventsource` package in Node). */
export type EventSourceConstructor = new (url: string, init?: { withCredentials?: boolean }) => EventSource;

export interface TaskUpdatesOptions {
  /** The service's base URL, e.g. `http://localhost:5000` (a trailing slash is fine). */
  baseUrl: string;
  transport: Transport;
  /** A bearer token with the scope `updates:read`, or a function giving the current one (none with auth off). */
  token?: TokenSource;
  /** Only these tasks' events (all visible tasks when absent or empty). */
  taskIds?: readonly string[];
  /** Resume after this event id: the first subscription then receives every later event first. */
  lastEventId?: number | null;
  /** Delay before the first reconnect attempt, doubled up to maxReconnectDelayMs, each wait spread over 0.5-1.5x. */
  reconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  /** SSE only: the EventSource implementation (defaults to globalThis.EventSource). */
  eventSource?: EventSourceConstructor;
  /** SSE only: the fetch used to learn the status of a refused stream (defaults to globalThis.fetch). */
  fetch?: typeof fetch;
  /** Socket.IO only: engine.io transports, e.g. `['websocket']` (default: polling, then upgrade to websocket). */
  socketTransports?: string[];
}

export type TaskUpdatesErrorKind = 'unauthorized' | 'forbidden' | 'refused' | 'bad_request' | 'unsupported';

/** A failure the client does not retry: the subscriber's error callback receives it. */
export class TaskUpdatesError extends Error {
  override readonly name = 'TaskUpdatesError';

  constructor(
    message: string,
    readonly kind: TaskUpdatesErrorKind,
    readonly transport: Transport,
    /** The HTTP status (SSE), when known. */
    readonly status?: number,
    /** The server's error code (`unauthorized`, `forbidden`, ...), when it gave one. */
    readonly code?: string,
  ) {
    super(message);
  }
}
