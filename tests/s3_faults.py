"""A real S3 API server on loopback (moto's server mode) and a proxy in front of it that misbehaves on purpose.

`FaultyS3Proxy` forwards every request to the S3 server unless a rule says otherwise: while fewer than
`failures` errors were answered, each call's first `attempts_failed` attempts (botocore numbers them in the
`amz-sdk-request` header) get S3's own throttling and server errors (503 SlowDown, 500 InternalError), so a
burst of throttling hits many calls of every process, each retried until it succeeds; or refuse writes
(403 AccessDenied) to keys matching `deny_put`. Clients reach it through the standard
`AWS_ENDPOINT_URL`, so they cannot tell it from S3.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERRORS = [(503, "SlowDown", "Please reduce your request rate."),
          (500, "InternalError", "We encountered an internal error. Please try again.")]


@contextlib.contextmanager
def moto_s3():
    """A moto S3 server on 127.0.0.1; yields the AWS environment that points clients at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    finally:
        server.stop()


def s3fs_for(env: dict):
    import s3fs

    return s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=env["AWS_ENDPOINT_URL"], skip_instance_cache=True)


class FaultyS3Proxy:
    def __init__(self, upstream: str, failures: int = 0, attempts_failed: int = 2, deny_put: str | None = None):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.failures = failures
        self.attempts_failed = attempts_failed
        self.deny_put = re.compile(deny_put) if deny_put else None
        self.lock = threading.Lock()
        self.requests = 0
        self.failed: list[tuple[str, str, int]] = []  # (method, path, status) of every error answered
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultyS3Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _verdict(self, method: str, path: str, sdk_request: str) -> tuple[int, str, str] | None:
        attempt = re.search(r"attempt=(\d+)", sdk_request)
        attempt = int(attempt.group(1)) if attempt else 1
        with self.lock:
            self.requests += 1
            if len(self.failed) < self.failures and attempt <= self.attempts_failed:
                error = ERRORS[(attempt - 1) % len(ERRORS)]
            elif self.deny_put and method == "PUT" and self.deny_put.search(path):
                error = (403, "AccessDenied", "Access Denied")
            else:
                return None
            self.failed.append((method, path, error[0]))
            return error

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunk = self.rfile.read(size)
                        self.rfile.readline()
                        if size == 0:
                            return data
                        data += chunk
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _relay(self) -> None:
                body = self._body()
                error = proxy._verdict(self.command, self.path, self.headers.get("amz-sdk-request", ""))
                if error is not None:
                    status, code, message = error
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                               f"<Message>{message}</Message><RequestId>fault</RequestId></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding",)}
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(key, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))  # HEAD: the object's size
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler
