import { HttpErrorResponse } from '@angular/common/http';
import { ChangeDetectionStrategy, Component, DestroyRef, computed, inject, signal } from '@angular/core';
import { takeUntilDestroyed, toSignal } from '@angular/core/rxjs-interop';
import { FormsModule } from '@angular/forms';
import type { Task, TaskEvent, TaskStatus, Transport } from '@task-notify/client';

import { APP_CONFIG } from './config';
import { PreferencesView } from './preferences';
import { TaskUpdatesService } from './task-updates.service';
import { TasksApiService } from './tasks-api.service';

const MAX_EVENTS = 100;

function describeHttpError(err: unknown): string {
  if (err instanceof HttpErrorResponse) {
    const body = err.error as { error?: { message?: string } } | null;
    if (err.status === 0) return 'the server is unreachable (or refuses this origin)';
    return `${err.status}: ${body?.error?.message ?? err.statusText}`;
  }
  return String(err);
}

@Component({
  selector: 'app-root',
  imports: [FormsModule, PreferencesView],
  templateUrl: './app.html',
  styleUrl: './app.css',
  changeDetection: ChangeDetectionStrategy.OnPush,
})
export class App {
  readonly config = inject(APP_CONFIG);
  private readonly updates = inject(TaskUpdatesService);
  private readonly api = inject(TasksApiService);

  readonly transport = toSignal(this.updates.transport$, { requireSync: true });
  readonly state = toSignal(this.updates.state$, { initialValue: 'closed' as const });
  readonly problem = toSignal(this.updates.problem$, { initialValue: null });

  private readonly taskMap = signal(new Map<string, Task>());
  readonly tasks = computed(() =>
    [...this.taskMap().values()].sort((a, b) => b.updated_at.localeCompare(a.updated_at) || a.task_id.localeCompare(b.task_id)),
  );
  readonly events = signal<TaskEvent[]>([]);
  readonly listError = signal<string | null>(null);
  readonly formMessage = signal<string | null>(null);
  readonly formError = signal(false);

  readonly statuses: TaskStatus[] = ['open', 'in_progress', 'done', 'cancelled'];
  readonly transports: Transport[] = ['socketio', 'sse'];
  form = { task_id: '123', title: '', status: '' as TaskStatus | '', description: '' };

  constructor() {
    const destroyRef = inject(DestroyRef);
    // Listen first, then load the list: an update made in between is not lost.
    this.updates.events$.pipe(takeUntilDestroyed(destroyRef)).subscribe((event) => this.apply(event));
    this.api
      .list()
      .pipe(takeUntilDestroyed(destroyRef))
      .subscribe({
        next: (tasks) => {
          this.listError.set(null);
          this.taskMap.update((current) => {
            const next = new Map(current);
            for (const task of tasks) {
              const known = next.get(task.task_id);
              if (!known || known.updated_at <= task.updated_at) next.set(task.task_id, task);
            }
            return next;
          });
        },
        error: (err: unknown) => this.listError.set(`Could not list the tasks: ${describeHttpError(err)}`),
      });
  }

  private apply(event: TaskEvent): void {
    this.events.update((events) => [event, ...events].slice(0, MAX_EVENTS));
    if (event.task.user_email !== this.config.userEmail) return;
    this.taskMap.update((current) => {
      const next = new Map(current);
      if (event.type === 'task.deleted') next.delete(event.task_id);
      else next.set(event.task_id, event.task);
      return next;
    });
  }

  useTransport(transport: Transport): void {
    this.updates.useTransport(transport);
  }

  edit(task: Task): void {
    this.form = { task_id: task.task_id, title: task.title, status: task.status, description: task.description };
  }

  submit(): void {
    const { task_id, title, status, description } = this.form;
    this.formMessage.set(null);
    this.api.update({ task_id: task_id.trim(), title, status: status || undefined, description }).subscribe({
      next: (answer) => {
        this.formError.set(false);
        this.formMessage.set(`Task ${answer.task.task_id} saved (event #${answer.event_id}).`);
      },
      error: (err: unknown) => {
        this.formError.set(true);
        this.formMessage.set(`Not saved: ${describeHttpError(err)}`);
      },
    });
  }
}
