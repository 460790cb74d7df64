/** Notification preferences: GET and PUT /preferences, typed. */
import type { TaskEventType, TokenSource } from './types.js';

/** The email channel: on or off, which event types send email, and the digest window. */
export interface EmailPreferences {
  enabled: boolean;
  events: TaskEventType[];
  /** 0: each event is mailed on its own; otherwise 60-604800, the length of a digest window in seconds. */
  digest_seconds: number;
}

/** A daily span, in 24-hour `HH:MM` in the user's time zone, in which email waits (e.g. 22:00 to 07:00). */
export interface QuietHours {
  start: string;
  end: string;
}

/** A user's notification preferences: the whole document of GET and PUT /preferences. */
export interface Preferences {
  email: EmailPreferences;
  /** An IANA time zone name, e.g. `Europe/Paris`. */
  timezone: string;
  quiet_hours: QuietHours | null;
}

/** The digest windows the live page and the Angular app offer, in seconds. */
export const DIGEST_PRESETS = { off: 0, fiveMinutes: 300, hourly: 3600, daily: 86_400 } as const;

export interface PreferencesOptions {
  /** The service's base URL, e.g. `http://localhost:5000`. */
  baseUrl: string;
  /** Any valid token of the user (none when the server runs with auth off). */
  token?: TokenSource;
  /** Whose preferences: another user's needs an `admin` token (and auth off needs one given). */
  userEmail?: string;
  /** The fetch to use (defaults to globalThis.fetch). */
  fetch?: typeof fetch;
}

export interface ApiErrorDetail {
  field?: string;
  message: string;
  type?: string;
}

/** An error answer of the API: its HTTP status and the `{"error": {code, message, details}}` body. */
export class ApiError extends Error {
  override readonly name = 'ApiError';

  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
    readonly details: ApiErrorDetail[] = [],
  ) {
    super(message);
  }
}

/** The user's preferences (the defaults when they never set any). */
export function getPreferences(options: PreferencesOptions): Promise<Preferences> {
  return request(options, 'GET');
}

/** Replace the user's preferences with the whole document; resolves with them as stored. */
export function setPreferences(options: PreferencesOptions, preferences: Preferences): Promise<Preferences> {
  return request(options, 'PUT', preferences);
}

async function request(options: PreferencesOptions, method: 'GET' | 'PUT', body?: Preferences): Promise<Preferences> {
  const doFetch = options.fetch ?? globalThis.fetch;
  const url = new URL(`${options.baseUrl.replace(/\/+$/, '')}/preferences`);
  if (options.userEmail) url.searchParams.set('user_email', options.userEmail);
  const headers: Record<string, string> = { Accept: 'application/json' };
  const token = typeof options.token === 'function' ? options.token() : options.token;
  if (token) headers['Authorization'] = `Bearer ${token}`;
  const init: RequestInit = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await doFetch(url, init);
  const answer: unknown = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (answer as { error?: { code?: string; message?: string; details?: ApiErrorDetail[] } } | null)?.error;
    throw new ApiError(
      `${method} /preferences: ${response.status} ${error?.message ?? response.statusText}`,
      response.status,
      error?.code ?? 'error',
      error?.details ?? [],
    );
  }
  return answer as Preferences;
}
