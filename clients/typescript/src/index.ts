export {
  ApiError,
  DIGEST_PRESETS,
  getPreferences,
  setPreferences,
  type ApiErrorDetail,
  type EmailPreferences,
  type Preferences,
  type PreferencesOptions,
  type QuietHours,
} from './preferences.js';
export { TaskUpdateStream, taskUpdates } from './task-updates.js';
export {
  TaskUpdatesError,
  type ConnectionState,
  type EventSourceConstructor,
  type Task,
  type TaskEvent,
  type TaskEventType,
  type TaskStatus,
  type TaskUpdatesErrorKind,
  type TaskUpdatesOptions,
  type Token,
  type TokenSource,
  type Transport,
} from './types.js';
