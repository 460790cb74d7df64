import { Injectable, inject } from '@angular/core';

import { APP_CONFIG } from './config';

/**
 * A stand-in for the application's sign-in: it gives the access token of the moment. Here that is the page's
 * `?token=`; in an application that signs its users in with an OpenID Connect provider, this is where its
 * library answers (angular-auth-oidc-client's `getAccessToken()`, `@auth0/auth0-angular`'s
 * `getAccessTokenSilently()`, ...), renewing the token with the provider when it is about to expire.
 *
 * The live stream asks for a token before every connect and again when the server ends the stream because
 * its token expired; the REST calls ask before each request.
 */
@Injectable({ providedIn: 'root' })
export class LoginService {
  private readonly config = inject(APP_CONFIG);

  /** The current access token; null when there is none (the server then must run with AUTH_DISABLED=1). */
  accessToken(): Promise<string | null> {
    return Promise.resolve(this.config.token);
  }
}
