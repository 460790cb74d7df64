/** getPreferences() and setPreferences() against the real service. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ApiError, DIGEST_PRESETS, type Preferences, getPreferences, setPreferences } from '../src/index.js';
import { ADMIN, type Server, makeToken, removeInstance, startServer } from './server.js';

const ANN = makeToken('ann@example.com', ['updates:read']); // any valid token of the user will do

const wanted: Preferences = {
  email: { enabled: true, events: ['task.created', 'task.deleted'], digest_seconds: DIGEST_PRESETS.hourly },
  timezone: 'Europe/Paris',
  quiet_hours: { start: '22:00', end: '07:00' },
};

describe('preferences', () => {
  let server: Server;

  beforeAll(async () => {
    server = await startServer({ env: { DEFAULT_TIMEZONE: 'America/New_York' } });
  });
  afterAll(async () => {
    await server.stop();
    removeInstance(server.instancePath);
  });

  it('reads the defaults, replaces the document and reads it back', async () => {
    const options = { baseUrl: server.baseUrl, token: ANN };
    expect(await getPreferences(options)).toEqual({
      email: { enabled: true, events: ['task.created', 'task.updated', 'task.deleted'], digest_seconds: 0 },
      timezone: 'America/New_York',
      quiet_hours: null,
    });
    expect(await setPreferences(options, wanted)).toEqual(wanted);
    expect(await getPreferences({ ...options, token: () => ANN })).toEqual(wanted);
  });

  it("acts for another user with an admin token, and not with the user's own", async () => {
    const other = { baseUrl: `${server.baseUrl}/`, userEmail: 'bob@example.com' };
    const off = { ...wanted, email: { ...wanted.email, enabled: false } };
    expect(await setPreferences({ ...other, token: ADMIN }, off)).toEqual(off);
    expect(await getPreferences({ ...other, token: ADMIN })).toEqual(off);
    const refused = await getPreferences({ ...other, token: ANN }).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(ApiError);
    expect((refused as ApiError).status).toBe(403);
  });

  it('rejects with an ApiError naming each invalid field', async () => {
    const bad = { ...wanted, timezone: 'Mars/Olympus', email: { ...wanted.email, digest_seconds: 30 } };
    const error = (await setPreferences({ baseUrl: server.baseUrl, token: ANN }, bad).catch((err: unknown) => err)) as ApiError;
    expect(error).toBeInstanceOf(ApiError);
    expect([error.status, error.code]).toEqual([422, 'validation_failed']);
    expect(error.details.map((d) => d.field).sort()).toEqual(['email.digest_seconds', 'timezone']);
    const anonymous = (await getPreferences({ baseUrl: server.baseUrl }).catch((err: unknown) => err)) as ApiError;
    expect([anonymous.status, anonymous.code]).toEqual([401, 'unauthorized']);
  });
});
