import { ChangeDetectionStrategy, Component, inject, signal } from '@angular/core';
import { FormsModule } from '@angular/forms';
import {
  ApiError,
  DIGEST_PRESETS,
  type Preferences,
  type TaskEventType,
  getPreferences,
  setPreferences,
} from '@task-notify/client';

import { APP_CONFIG } from './config';

interface Preset {
  seconds: number;
  label: string;
}

const PRESETS: Preset[] = [
  { seconds: DIGEST_PRESETS.off, label: 'off: each change at once' },
  { seconds: DIGEST_PRESETS.fiveMinutes, label: 'every 5 minutes' },
  { seconds: DIGEST_PRESETS.hourly, label: 'hourly' },
  { seconds: DIGEST_PRESETS.daily, label: 'daily' },
];

/** The user's email preferences (GET and PUT /preferences through the TypeScript client). */
@Component({
  selector: 'app-preferences',
  imports: [FormsModule],
  templateUrl: './preferences.html',
  styleUrl: './preferences.css',
  changeDetection: ChangeDetectionStrategy.OnPush,
})
export class PreferencesView {
  readonly config = inject(APP_CONFIG);
  readonly eventTypes: TaskEventType[] = ['task.created', 'task.updated', 'task.deleted'];
  readonly presets = signal<Preset[]>(PRESETS);
  /** The form's copy of the document; null until loaded. */
  readonly prefs = signal<Preferences | null>(null);
  readonly message = signal<string | null>(null);
  readonly failed = signal(false);

  private get options() {
    return { baseUrl: this.config.apiBaseUrl, token: this.config.token, userEmail: this.config.userEmail };
  }

  constructor() {
    void this.load();
  }

  async load(): Promise<void> {
    await this.run(async () => this.show(await getPreferences(this.options)), 'Preferences loaded.');
  }

  async save(): Promise<void> {
    const prefs = this.prefs();
    if (prefs) await this.run(async () => this.show(await setPreferences(this.options, prefs)), 'Preferences saved.');
  }

  hasEvent(type: TaskEventType): boolean {
    return this.prefs()?.email.events.includes(type) ?? false;
  }

  toggleEvent(type: TaskEventType, on: boolean): void {
    this.edit((p) => {
      const events = p.email.events.filter((t) => t !== type);
      p.email.events = on ? this.eventTypes.filter((t) => t === type || events.includes(t)) : events;
    });
  }

  setEnabled(on: boolean): void {
    this.edit((p) => (p.email.enabled = on));
  }

  setDigest(seconds: string): void {
    this.edit((p) => (p.email.digest_seconds = Number(seconds)));
  }

  setTimezone(zone: string): void {
    this.edit((p) => (p.timezone = zone.trim()));
  }

  setQuiet(on: boolean): void {
    this.edit((p) => (p.quiet_hours = on ? { start: '22:00', end: '07:00' } : null));
  }

  setQuietTime(which: 'start' | 'end', value: string): void {
    this.edit((p) => {
      if (p.quiet_hours) p.quiet_hours[which] = value;
    });
  }

  private edit(change: (p: Preferences) => void): void {
    const current = this.prefs();
    if (!current) return;
    const copy = structuredClone(current);
    change(copy);
    this.prefs.set(copy);
  }

  private show(prefs: Preferences): void {
    const seconds = prefs.email.digest_seconds;
    if (!this.presets().some((p) => p.seconds === seconds)) {
      this.presets.update((list) => [...list, { seconds, label: `every ${seconds} seconds` }]);
    }
    this.prefs.set(prefs);
  }

  private async run(action: () => Promise<void>, done: string): Promise<void> {
    try {
      await action();
      this.failed.set(false);
      this.message.set(done);
    } catch (err: unknown) {
      this.failed.set(true);
      if (err instanceof ApiError) {
        const fields = err.details.map((d) => `${d.field}: ${d.message}`).join('; ');
        this.message.set(`${err.message}${fields ? ` (${fields})` : ''}`);
      } else {
        this.message.set(`The server is unreachable (or refuses this origin): ${String(err)}`);
      }
    }
  }
}
