"""A resolver for tests (download.resolver = "tests.slow_dns:getaddrinfo"): every lookup takes
SLOW_DNS_SECONDS and then fails, as a dead host's lookup does on a slow resolver: the name does not exist
(EAI_NONAME), or with SLOW_DNS_FAILURE=again the resolver cannot answer for now (EAI_AGAIN). Each lookup
is recorded as a line "PID HOST" in SLOW_DNS_LOG, so a test can count lookups per host and process."""

from __future__ import annotations

import os
import socket
import time


def getaddrinfo(host, port, *args, **kwargs):
    log = os.environ.get("SLOW_DNS_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {host}\n")
    time.sleep(float(os.environ.get("SLOW_DNS_SECONDS", "5")))
    if os.environ.get("SLOW_DNS_FAILURE") == "again":
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
