/** Test support: the real service (`python app.py`) in a subprocess, tokens, and HTTP helpers. */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import type { Task, TaskEvent } from '../src/index.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const PYTHON = process.env['PYTHON'] ?? join(ROOT, '.venv/bin/python');
export const SECRET = 'vitest-secret-key-long-enough-for-hs256-0123456789abcdef';

export function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? ok(address.port) : fail(new Error('no port'))));
    });
  });
}

function b64url(data: string | Buffer): string {
  return Buffer.from(data).toString('base64url');
}

/** An HS256 JWT as the service issues them (`flask --app app token create`). */
export function makeToken(
  user = 'admin@example.com',
  scopes: string[] = ['tasks:write', 'tasks:read', 'updates:read', 'admin'],
  expiresIn = 3600,
  secret = SECRET,
): string {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ sub: user, scope: scopes.join(' '), iat: now, exp: now + expiresIn }));
  const signature = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${signature}`;
}

export const ADMIN = makeToken();

export interface Server {
  baseUrl: string;
  port: number;
  instancePath: string;
  stop(): Promise<void>;
}

export interface StartOptions {
  port?: number;
  instancePath?: string;
  env?: Record<string, string>;
}

/** `python app.py` on a free port (or the given one) with its own SQLite database; resolves once /healthz answers. */
export async function startServer(options: StartOptions = {}): Promise<Server> {
  const port = options.port ?? (await freePort());
  const instancePath = options.instancePath ?? mkdtempSync(join(tmpdir(), 'tasks-client-'));
  const child: ChildProcess = spawn(PYTHON, ['app.py'], {
    cwd: ROOT,
    env: {
      ...process.env,
      PORT: String(port),
      HOST: '127.0.0.1',
      INSTANCE_PATH: instancePath,
      NOTIFY_WORKERS: '1',
      SECRET_KEY: SECRET,
      SSE_HEARTBEAT_SECONDS: '1',
      SSE_RETRY_MS: '200',
      LOG_LEVEL: 'WARNING',
      PYTHONWARNINGS: 'ignore',
      ...options.env,
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const exited = new Promise<void>((ok) => child.once('exit', () => ok()));
  const baseUrl = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the server exited with ${child.exitCode} before it answered`);
    try {
      const response = await fetch(`${baseUrl}/healthz`);
      if (response.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the server on ${baseUrl} did not answer /healthz within 20s`);
    }
    await new Promise((ok) => setTimeout(ok, 50));
  }
  return {
    baseUrl,
    port,
    instancePath,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
}

export function removeInstance(path: string): void {
  rmSync(path, { recursive: true, force: true });
}

export interface UpdateAnswer {
  status: string;
  task: Task;
  event_id: number;
}

export async function postUpdate(
  baseUrl: string,
  body: Record<string, string>,
  token: string | null = ADMIN,
): Promise<UpdateAnswer> {
  const response = await fetch(`${baseUrl}/update_task`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ user_email: 'test@example.com', ...body }),
  });
  if (!response.ok) throw new Error(`POST /update_task: ${response.status} ${await response.text()}`);
  return (await response.json()) as UpdateAnswer;
}

/** Resolves with the first value of `values` that satisfies `predicate`, or rejects after timeoutMs. */
export function waitUntil<T>(read: () => T, predicate: (value: T) => boolean, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  return new Promise((ok, fail) => {
    const deadline = Date.now() + timeoutMs;
    const check = (): void => {
      const value = read();
      if (predicate(value)) return ok(value);
      if (Date.now() > deadline) return fail(new Error(`timed out after ${timeoutMs}ms waiting for ${what}`));
      setTimeout(check, 20);
    };
    check();
  });
}

export type { TaskEvent };
