import { Injectable, inject } from '@angular/core';
import {
  type ConnectionState,
  type TaskEvent,
  TaskUpdatesError,
  type TaskUpdateStream,
  type Transport,
  taskUpdates,
} from '@task-notify/client';
import {
  BehaviorSubject,
  EMPTY,
  Observable,
  ReplaySubject,
  catchError,
  combineLatest,
  filter,
  map,
  merge,
  share,
  switchMap,
  tap,
} from 'rxjs';

import { APP_CONFIG } from './config';
import { LoginService } from './login.service';

/**
 * Live task events for the app, over the transport of the moment. Switching transport closes the
 * old connection and opens the new one after the last event seen, so nothing is missed or repeated.
 */
@Injectable({ providedIn: 'root' })
export class TaskUpdatesService {
  private readonly config = inject(APP_CONFIG);
  private readonly login = inject(LoginService);
  private readonly transportSubject = new BehaviorSubject<Transport>(this.config.transport);
  private readonly streams = new ReplaySubject<TaskUpdateStream>(1);
  private readonly problems = new BehaviorSubject<string | null>(null);
  private lastEventId: number | null = null;

  readonly transport$: Observable<Transport> = this.transportSubject.asObservable();

  /** Every event, once, in order; shared by all subscribers (connected while anyone listens). */
  readonly events$: Observable<TaskEvent> = this.transportSubject.pipe(
    switchMap((transport) => {
      const stream = taskUpdates({
        baseUrl: this.config.apiBaseUrl,
        transport,
        // Asked before every connect, and again when the server ends the stream as the token expired
        // (state$ shows 'renewing' meanwhile).
        token: () => this.login.accessToken(),
        lastEventId: this.lastEventId,
      });
      this.problems.next(null);
      this.streams.next(stream);
      return stream.pipe(
        tap((event) => (this.lastEventId = event.id)),
        catchError((err: unknown) => {
          // A refusal the client does not retry (bad token, missing scope): say so, keep the app alive.
          this.problems.next(err instanceof TaskUpdatesError ? `${err.kind}: ${err.message}` : String(err));
          return EMPTY;
        }),
      );
    }),
    share(),
  );

  /** The connection state of the current transport (`renewing` while a fresh token is fetched); `refused` once it gave up. */
  readonly state$: Observable<ConnectionState | 'refused'> = this.streams.pipe(
    switchMap((stream) =>
      combineLatest([stream.state$, this.problems]).pipe(
        map(([state, problem]) => (problem !== null && state === 'closed' ? 'refused' : state)),
      ),
    ),
  );

  /** The latest failure: a refusal, or a transient one the client is retrying after (null once open). */
  readonly problem$: Observable<string | null> = this.streams.pipe(
    switchMap((stream) =>
      merge(
        stream.failures$.pipe(map((err) => err.message)),
        stream.state$.pipe(
          filter((state) => state === 'open'),
          map(() => null),
        ),
        this.problems.pipe(filter((problem) => problem !== null)),
      ),
    ),
  );

  get transport(): Transport {
    return this.transportSubject.value;
  }

  useTransport(transport: Transport): void {
    if (transport !== this.transportSubject.value) this.transportSubject.next(transport);
  }
}
