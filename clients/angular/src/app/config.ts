import { InjectionToken } from '@angular/core';
import type { Transport } from '@task-notify/client';

/** Where the app finds the service and who it acts as: from the page's query string. */
export interface AppConfig {
  /** The service's base URL (`?api=`), default http://localhost:5000. */
  apiBaseUrl: string;
  /** A bearer token (`?token=`); none when the server runs with AUTH_DISABLED=1. */
  token: string | null;
  /** The live transport to start with (`?transport=socketio|sse`), default socketio. */
  transport: Transport;
  /** Whose tasks to list (`?user=`): default the token's subject, else test@example.com. */
  userEmail: string;
}

export const APP_CONFIG = new InjectionToken<AppConfig>('APP_CONFIG');

/** The token's `sub` claim, read without verifying it (the server does that). */
function tokenSubject(token: string | null): string | null {
  const payload = token?.split('.')[1];
  if (!payload) return null;
  try {
    const json = atob(payload.replace(/-/g, '+').replace(/_/g, '/'));
    const sub = (JSON.parse(json) as { sub?: unknown }).sub;
    return typeof sub === 'string' ? sub : null;
  } catch {
    return null;
  }
}

export function configFromLocation(search: string): AppConfig {
  const params = new URLSearchParams(search);
  const token = params.get('token') || null;
  const transport = params.get('transport') === 'sse' ? 'sse' : 'socketio';
  return {
    apiBaseUrl: (params.get('api') || 'http://localhost:5000').replace(/\/+$/, ''),
    token,
    transport,
    userEmail: params.get('user') || tokenSubject(token) || 'test@example.com',
  };
}
