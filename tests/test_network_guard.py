"""The suite's own safety net: nothing but loopback and this machine's address is reachable."""

from __future__ import annotations

import socket
import subprocess
import sys

import conftest
import pytest

# TEST-NET-3 (RFC 5737): documentation-only, never routed; the guard must refuse it before any packet
OUTSIDE = "203.0.113.7"


@pytest.fixture
def expect_violation():
    """The test triggers the guard on purpose: check it recorded that, then forgive it."""
    before = len(conftest.netguard_violations())
    yield
    new = conftest.netguard_violations()[before:]
    assert new, "the guard did not record the refused connection"
    with open(conftest._log.name, "w") as f:
        f.write("\n".join(conftest.netguard_violations()[:before]) + ("\n" if before else ""))


def test_refused_in_this_process(expect_violation):
    with pytest.raises(ConnectionRefusedError, match="test network guard"):
        socket.create_connection((OUTSIDE, 80), timeout=1)


def test_dns_refused_in_this_process(expect_violation):
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("example.com", 80)


def test_refused_in_child_processes(expect_violation):
    code = (f"import socket\ntry:\n    socket.create_connection(({OUTSIDE!r}, 80), timeout=1)\n"
            "except ConnectionRefusedError:\n    print('refused')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "refused", out.stderr


def test_loopback_allowed():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    server.close()
