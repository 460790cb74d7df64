"""The HTTP API: the views, their schemas, authentication, the rate limit, OpenAPI, the pages, /metrics."""
