import { HttpClient, HttpHeaders } from '@angular/common/http';
import { Injectable, inject } from '@angular/core';
import type { Task, TaskStatus } from '@task-notify/client';
import { Observable, from, map, switchMap } from 'rxjs';

import { APP_CONFIG } from './config';
import { LoginService } from './login.service';

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

/** The REST side: GET /tasks and POST /update_task, with the sign-in's token of the moment. */
@Injectable({ providedIn: 'root' })
export class TasksApiService {
  private readonly http = inject(HttpClient);
  private readonly config = inject(APP_CONFIG);
  private readonly login = inject(LoginService);

  /** The Authorization header, asked of the sign-in before each request. */
  private headers(): Observable<HttpHeaders> {
    return from(this.login.accessToken()).pipe(
      map((token) => (token ? new HttpHeaders({ Authorization: `Bearer ${token}` }) : new HttpHeaders())),
    );
  }

  /** The user's tasks (first page of up to 100). */
  list(): Observable<Task[]> {
    return this.headers().pipe(
      switchMap((headers) =>
        this.http.get<{ tasks: Task[]; next_cursor: string | null }>(`${this.config.apiBaseUrl}/tasks`, {
          headers,
          params: { user_email: this.config.userEmail, limit: 100 },
        }),
      ),
      map((page) => page.tasks),
    );
  }

  update(change: TaskChange): Observable<UpdateAnswer> {
    const body: Record<string, string> = { user_email: this.config.userEmail, task_id: change.task_id };
    for (const key of ['title', 'status', 'description'] as const) {
      const value = change[key];
      if (value) body[key] = value;
    }
    return this.headers().pipe(
      switchMap((headers) => this.http.post<UpdateAnswer>(`${this.config.apiBaseUrl}/update_task`, body, { headers })),
    );
  }
}
