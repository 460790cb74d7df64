import { HttpClient, HttpHeaders } from '@angular/common/http';
import { Injectable, inject } from '@angular/core';
import type { Task, TaskStatus } from '@task-notify/client';
import { Observable, map } from 'rxjs';

import { APP_CONFIG } from './config';

export interface TaskChange {
  task_id: string;
  title?: string;
  status?: TaskStatus;
  description?: string;
}

export interface UpdateAnswer {
  status: string;
  task: Task;
  event_id: number;
}

/** The REST side: GET /tasks and POST /update_task, with the configured token. */
@Injectable({ providedIn: 'root' })
export class TasksApiService {
  private readonly http = inject(HttpClient);
  private readonly config = inject(APP_CONFIG);

  private headers(): HttpHeaders {
    const token = this.config.token;
    return token ? new HttpHeaders({ Authorization: `Bearer ${token}` }) : new HttpHeaders();
  }

  /** The user's tasks (first page of up to 100). */
  list(): Observable<Task[]> {
    return this.http
      .get<{ tasks: Task[]; next_cursor: string | null }>(`${this.config.apiBaseUrl}/tasks`, {
        headers: this.headers(),
        params: { user_email: this.config.userEmail, limit: 100 },
      })
      .pipe(map((page) => page.tasks));
  }

  update(change: TaskChange): Observable<UpdateAnswer> {
    const body: Record<string, string> = { user_email: this.config.userEmail, task_id: change.task_id };
    for (const key of ['title', 'status', 'description'] as const) {
      const value = change[key];
      if (value) body[key] = value;
    }
    return this.http.post<UpdateAnswer>(`${this.config.apiBaseUrl}/update_task`, body, { headers: this.headers() });
  }
}
