"""Schemathesis against the live server's /openapi.json: no 5xx, and every answer as the document says.

The server runs as users run it (`python app.py`, eventlet) with a token of an ordinary user made by
`flask --app app token create` (auth off if that command is missing). GET /task_updates is left out (it
never ends); tests/test_openapi.py checks its answer and its events against the document.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from support import ROOT, LiveServer

FUZZ_USER = "fuzz@example.com"
FUZZ_SCOPES = ("tasks:write", "tasks:read", "updates:read")
MAX_EXAMPLES = 30
SEED = 20261129
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
NOT_FUZZED = "/task_updates"


def fuzz_token(server: LiveServer) -> str | None:
    """A token for FUZZ_USER from the CLI, under the server's own settings; None when there is no such command."""
    command = [sys.executable, "-m", "flask", "--app", "app", "token", "create", "--user", FUZZ_USER]
    for scope in FUZZ_SCOPES:
        command += ["--scope", scope]
    env = {**os.environ, **server.env}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    token = result.stdout.strip()
    if result.returncode != 0 or not token or any(c.isspace() for c in token):
        return None
    return token


@dataclass
class Run:
    """What the fuzzer did: operations, cases sent, and distinct failures with a curl to reproduce each."""

    auth: str = ""
    operations: set[str] = field(default_factory=set)
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    # (operation, failure) -> (status, curl)
    failures: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)

    def record(self, label: str, failures: tuple[Failure, ...], status: int, curl: str) -> None:
        for failure in failures:
            self.failures.setdefault((label, f"{failure.code} {failure.title}"), (status, curl))

    @property
    def server_errors(self) -> int:
        """Operations that answered with a 5xx."""
        return len({label for (label, _), (status, _) in self.failures.items() if status >= 500})

    @property
    def spec_mismatches(self) -> int:
        """Answers below 500 that differ from the document (a 5xx is counted once, as a server error)."""
        return sum(1 for status, _ in self.failures.values() if status < 500)

    def summary(self) -> str:
        lines = [f"schemathesis ({self.auth}): {len(self.operations)} operations, {self.cases} cases, "
                 f"statuses {dict(sorted(self.statuses.items()))}; {self.server_errors} operations with server "
                 f"errors, {self.spec_mismatches} spec mismatches"]
        lines += [f"  {label}: {title} ({status})\n    {curl}"
                  for (label, title), (status, curl) in sorted(self.failures.items())]
        return "\n".join(lines)


RUN = Run()


@pytest.fixture
def fuzz_target(start_server: Callable[..., LiveServer], request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The live server and the headers to call it with; prints what the fuzzer did at the end."""
    global RUN
    RUN = Run()
    server = start_server()
    token = fuzz_token(server)
    if token is None:
        server.stop()
        server = start_server(AUTH_DISABLED="1")
        headers, RUN.auth = {}, "AUTH_DISABLED=1: no `flask token create` yet"
    else:
        headers, RUN.auth = {"Authorization": f"Bearer {token}"}, f"token of {FUZZ_USER}"
    response = requests.get(server.url + "/openapi.json", timeout=10)
    assert response.status_code == 200, "GET /openapi.json must be served: app.py registers openapi.bp"
    document = response.json()
    yield {"server": server, "headers": headers, "document": document}
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + RUN.summary())
    operations = sum(len(item) for path, item in document["paths"].items() if path != NOT_FUZZED)
    assert len(RUN.operations) == operations, f"only {sorted(RUN.operations)} were fuzzed"


@pytest.fixture
def api_schema(fuzz_target: dict[str, Any], request: pytest.FixtureRequest) -> Any:
    if not hasattr(request.node, "_nodeid"):
        # schemathesis' lazy schemas read and rename node._nodeid, which pytest 9.2 no longer has; it is only
        # used to show the operation in the test's name.
        request.node._nodeid = request.node.nodeid
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    })
    schema = schemathesis.openapi.from_dict(fuzz_target["document"], config=config)
    schema.config.update(base_url=fuzz_target["server"].url, headers=fuzz_target["headers"], request_timeout=10)

    @schema.hook
    def map_body(context: Any, body: Any) -> Any:
        # Most generated addresses are somebody else's, and an ordinary user may not write their tasks (403).
        # Give about half of the bodies to the token's user so writes get through too; chosen by a hash of
        # the body, so the run stays deterministic.
        if isinstance(body, dict) and isinstance(body.get("user_email"), str):
            if zlib.crc32(json.dumps(body, sort_keys=True, default=str).encode()) % 2 == 0:
                return {**body, "user_email": FUZZ_USER}
        return body

    return schema


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path=NOT_FUZZED)


@schema.parametrize()
def test_the_api_answers_as_documented(case: Any) -> None:
    """No 5xx; every status, media type and body as documented (GET /task_updates excepted)."""
    label = case.operation.label
    RUN.operations.add(label)
    RUN.cases += 1
    response = case.call()
    RUN.statuses[response.status_code] += 1
    try:
        case.validate_response(response, checks=CHECKS)
    except FailureGroup as group:
        RUN.record(label, group.exceptions, response.status_code, case.as_curl_command())
        raise
    except Failure as failure:
        RUN.record(label, (failure,), response.status_code, case.as_curl_command())
        raise
