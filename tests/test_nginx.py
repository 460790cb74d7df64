"""The nginx example of docs/deployment.md, run as it stands, in front of a live server: Socket.IO, websockets, SSE.

The block is read from docs/deployment.md at test time (between its marker comment and
the end of the ```nginx fence), so the example and this test cannot drift.
nginx runs from a configuration of the test's own (prefix, pid, logs, temporary
files and ports in tmp_path), never the machine's.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import socketio
import websocket

from support import ROOT, SSEClient, free_port, wait_for

MARKER = "<!-- nginx-example:"
USER = "admin@example.com"


def readme_block() -> str:
    """The ```nginx block that follows the marker comment of docs/deployment.md."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    match = re.search(re.escape(MARKER) + r"[^\n]*\n```nginx\n(.*?)\n```", text, re.S)
    assert match, f"docs/deployment.md has no ```nginx block after a {MARKER} comment"
    return match.group(1)


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None:
        message = "nginx is not installed (bin/services installs it with apt-get, as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (openssl), which the test's clients take as their only authority."""
    if shutil.which("openssl") is None:
        message = "openssl is not installed: the TLS variant needs a certificate"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def plain_variant(block: str) -> str:
    """The page's "without TLS": no redirecting server, and `listen 80;` in place of the TLS lines."""
    block = re.sub(r"server \{[^{}]*return 301[^{}]*\}\n", "", block)
    block = re.sub(r"[ \t]*ssl_certificate(_key)?\s[^;]*;\n", "", block)
    return block.replace("listen 443 ssl;", "listen 80;")


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    directory: Path

    def log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _temp_paths(binary: str, directory: Path) -> str:
    """A temporary folder of the test's own for each module this nginx was built with."""
    built = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10).stderr
    lines = []
    for module in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in built:
            lines.append(f"{module}_temp_path {directory / module};")
    return "\n    ".join(lines)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[Callable[[str, list[int]], Nginx]]:
    """Run nginx in the foreground on a configuration of the test's own; stopped at the end."""
    binary = nginx_binary()
    started: list[Nginx] = []

    def start(http_block: str, ports: list[int]) -> Nginx:
        directory = tmp_path / f"nginx{len(started)}"
        directory.mkdir()
        conf = directory / "nginx.conf"
        # One process (no master): as root, workers would switch to a user that cannot reach tmp_path.
        conf.write_text(f"""daemon off;
master_process off;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {directory / "access.log"};
    {_temp_paths(binary, directory)}
{http_block}
}}
""")
        process = subprocess.Popen([binary, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nginx = Nginx(process, directory)
        started.append(nginx)

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"nginx exited with {process.returncode}:\n{nginx.log()}\n{conf.read_text()}")
            return all(listening(port) for port in ports)

        wait_for(ready, 20, "nginx to listen")
        return nginx

    yield start
    for nginx in started:
        if nginx.process.poll() is None:
            nginx.process.terminate()
            try:
                nginx.process.wait(10)
            except subprocess.TimeoutExpired:
                nginx.process.kill()
                nginx.process.wait()


@pytest.mark.parametrize("variant", ["tls", "plain"])
def test_the_readme_nginx_example_serves_socketio_websockets_and_sse(variant, start_server, start_nginx, tmp_path,
                                                                     monkeypatch):
    # As docs/deployment.md says: trust the one proxy in front, answer only for the name clients use.
    server = start_server(TRUSTED_PROXIES=1, ALLOWED_HOSTS="127.0.0.1", SSE_HEARTBEAT_SECONDS=1)
    block = re.sub(r"server 127\.0\.0\.1:\d+;", f"server 127.0.0.1:{server.port};", readme_block())
    port, redirect_port = free_port(), free_port()
    session = requests.Session()
    if variant == "tls":
        cert, key = self_signed_certificate(tmp_path)
        block = re.sub(r"ssl_certificate\s[^;]*;", f"ssl_certificate {cert};", block)
        block = re.sub(r"ssl_certificate_key\s[^;]*;", f"ssl_certificate_key {key};", block)
        block = block.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
        block = block.replace("listen 80;", f"listen 127.0.0.1:{redirect_port};")
        start_nginx(block, [port, redirect_port])
        origin = f"https://127.0.0.1:{port}"
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # for the SSE client
        session.verify = str(cert)
        redirect = requests.get(f"http://127.0.0.1:{redirect_port}/tasks", allow_redirects=False, timeout=10)
        assert redirect.status_code == 301 and redirect.headers["Location"].startswith("https://")
    else:
        start_nginx(plain_variant(block).replace("listen 80;", f"listen 127.0.0.1:{port};"), [port])
        origin = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {server.token}"}

    # Socket.IO's handshake from a page of nginx's own origin.
    handshake = session.get(f"{origin}/socket.io/?EIO=4&transport=polling", headers={"Origin": origin}, timeout=10)
    assert handshake.status_code == 200, handshake.text
    assert '"upgrades":["websocket"]' in handshake.text
    # A websocket straight away, and python-socketio's client upgrading from polling to a websocket.
    ws = websocket.create_connection(f"{origin.replace('http', 'ws', 1)}/socket.io/?EIO=4&transport=websocket",
                                     origin=origin, timeout=10, sslopt={"ca_certs": str(session.verify)}
                                     if variant == "tls" else None)
    assert ws.recv().startswith("0{")
    ws.close()
    session.headers["Origin"] = origin
    events: list[dict] = []
    client = socketio.Client(reconnection=False, http_session=session)
    client.on("task_update", events.append)
    client.connect(origin, auth={"token": server.token}, transports=["polling", "websocket"], wait_timeout=10)
    try:
        wait_for(lambda: client.transport() == "websocket", 10, "the upgrade to a websocket")
        sse = SSEClient(f"{origin}/task_updates", headers=auth).start()
        assert sse.status == 200 and sse.response_headers["Content-Type"].startswith("text/event-stream")
        wait_for(lambda: sse.comments, 10, "the SSE stream to open")
        posted = session.post(f"{origin}/update_task", json={"task_id": "n1", "user_email": USER}, headers=auth,
                              timeout=10)
        assert posted.status_code == 200, posted.text
        assert sse.wait_for_events(1)[0]["task_id"] == "n1"
        wait_for(lambda: events, 10, "the Socket.IO event")
        assert events[0]["id"] == posted.json()["event_id"]
        assert "heartbeat" in wait_for(lambda: [c for c in sse.comments if "heartbeat" in c], 10, "a heartbeat")[0]
        sse.close()
    finally:
        client.disconnect()

    # What nginx keeps from the public, and the host check behind it.
    assert session.get(f"{origin}/metrics", timeout=10).status_code == 403
    spoofed = session.get(f"{origin}/tasks", headers={**auth, "Host": "attacker.example",
                                                     "X-Forwarded-Host": "127.0.0.1"}, timeout=10)
    assert spoofed.status_code == 400 and spoofed.json()["error"]["code"] == "bad_host"
    refused = session.get(f"{origin}/socket.io/?EIO=4&transport=polling",
                          headers={"Origin": "https://attacker.example"}, timeout=10)
    assert refused.status_code == 400
    assert "Traceback" not in server.log()
