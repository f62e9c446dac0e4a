"""``OpenAIChatPolicy`` retries through the OpenAI client, against a small local HTTP server.

The server answers HTTP 429 with ``Retry-After`` the first time(s), then a chat completion: the
client's own retries must wait what the server asked (the policy's old loop ignored it and
slept ``backoff · 2^k``: 1 s for the first retry) and then return the reply.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")

from medseg_agents.mllm import OpenAIChatPolicy  # noqa: E402

REPLY = '<tool_call>\n{"name": "stop_action", "arguments": {}}\n</tool_call>'
RETRY_AFTER_S = 2


class Server(ThreadingHTTPServer):
    daemon_threads = True
    refusals = 1  # 429s before the first completion
    status = 429
    arrivals: list[float]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.arrivals.append(time.monotonic())
        if len(self.server.arrivals) <= self.server.refusals:
            body = {"error": {"message": "slow down", "type": "rate_limit", "code": None}}
            self._send(self.server.status, body, {"Retry-After": str(RETRY_AFTER_S)})
            return
        self._send(
            200,
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": REPLY},
                    }
                ],
            },
        )

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.arrivals = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def policy(server: Server, **kwargs: object) -> OpenAIChatPolicy:
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return OpenAIChatPolicy("m", base_url=url, timeout=10.0, **kwargs)  # type: ignore[arg-type]


MESSAGES = [{"role": "user", "content": "segment it"}]


def test_a_rate_limit_is_retried_after_the_servers_retry_after(server: Server) -> None:
    replies = policy(server).generate([MESSAGES])
    assert replies == [REPLY]
    first, second = server.arrivals
    assert second - first >= RETRY_AFTER_S - 0.05, "the retry must wait what Retry-After asks"


def test_retries_spent_raise_naming_the_server_and_the_status(server: Server) -> None:
    server.refusals = 5
    with pytest.raises(RuntimeError, match=r"127\.0\.0\.1.*after 1 tries: RateLimitError"):
        policy(server, max_retries=0).generate([MESSAGES])
    assert len(server.arrivals) == 1


def test_a_server_error_can_be_answered_empty(server: Server) -> None:
    server.refusals, server.status = 5, 500
    quick = policy(server, max_retries=0, on_server_error="empty")
    assert quick.generate([MESSAGES]) == [""] and quick.server_errors == 1


def test_the_old_backoff_option_warns_and_is_ignored(server: Server) -> None:
    with pytest.warns(DeprecationWarning, match="backoff"):
        old = policy(server, backoff=0.0)
    assert old.client.max_retries == old.max_retries == 3
    assert old.generate([MESSAGES]) == [REPLY]
    assert server.arrivals[1] - server.arrivals[0] >= RETRY_AFTER_S - 0.05
