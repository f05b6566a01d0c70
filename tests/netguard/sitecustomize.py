"""Socket-level allow-list for the test suite: only loopback and this machine's own addresses.

The suite puts this folder on PYTHONPATH with TAILOR_NETGUARD=1, so every Python process it
starts (the `tailor` CLI, Ray workers, img2dataset's workers) installs the guard at start-up.
A refused connection raises ConnectionRefusedError in the caller and is appended to the file
named by TAILOR_NETGUARD_LOG; the suite fails any test during which that file grows.

One refusal is expected and not flagged: Ray's dashboard process probes the cloud metadata
endpoints (169.254.169.254, metadata.google.internal) at every cluster start, whatever the
usage-stats setting. It is still refused here; it is just not our code's doing.

DNS: a lookup of a name that is not this machine's is refused too, unless TAILOR_NETGUARD_DNS=resolver
(benchmarks/dead_web.py): then the machine's own resolver is asked, as a crawler of a dead URL table
asks it, and every connection to what it answers is still refused and recorded.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import sys

_LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", socket.gethostname()}
_CLOUD_METADATA = {"169.254.169.254", "metadata.google.internal"}


def _own_addresses() -> set[ipaddress._BaseAddress]:
    """IPv4 and IPv6 addresses of this machine's interfaces (Ray binds its processes there)."""
    found: set[ipaddress._BaseAddress] = set()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
                found.add(ipaddress.ip_address(packed[20:24]))
            except OSError:
                pass
    finally:
        probe.close()
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                found.add(ipaddress.ip_address(int(line.split()[0], 16)))
    except OSError:
        pass
    return found


def _allowed(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host in _LOCAL_NAMES
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in _LOOPBACK) or ip in _OWN


def _is_ray_dashboard_probe(host: str) -> bool:
    return host in _CLOUD_METADATA and any(arg.endswith("ray/dashboard/dashboard.py") for arg in sys.argv[:1])


def _record(what: str, host: str) -> None:
    if _is_ray_dashboard_probe(host):
        return
    path = os.environ.get("TAILOR_NETGUARD_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"pid {os.getpid()}: {what}\n")


def _guard_address(sock: socket.socket, address, verb: str) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    host = address[0] if isinstance(address, tuple) else str(address)
    if not _allowed(host):
        # a UDP connect() sends nothing (Ray uses one to find its own IP): refuse it, don't flag it
        if not (verb == "connect" and sock.type == socket.SOCK_DGRAM):
            _record(f"{verb} to {address!r} refused by the test network guard", host)
        raise ConnectionRefusedError(f"test network guard: {verb} to {address!r} is not loopback")


def install() -> None:
    if getattr(socket, "_tailor_guarded", False):
        return
    global _OWN
    _OWN = _own_addresses()
    connect, connect_ex, sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto
    getaddrinfo = socket.getaddrinfo

    def guarded_connect(self, address):
        _guard_address(self, address, "connect")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        _guard_address(self, address, "connect")
        return connect_ex(self, address)

    def guarded_sendto(self, data, *args):
        _guard_address(self, args[-1], "sendto")
        return sendto(self, data, *args)

    ask_resolver = os.environ.get("TAILOR_NETGUARD_DNS") == "resolver"

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not ask_resolver:
            name = host.decode() if isinstance(host, bytes) else str(host)
            if not _allowed(name) and not _is_ip(name):
                _record(f"DNS lookup of {name!r} refused by the test network guard", name)
                raise socket.gaierror(socket.EAI_NONAME, f"test network guard: no DNS for {name!r}")
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex
    socket.socket.sendto = guarded_sendto
    socket.getaddrinfo = guarded_getaddrinfo
    socket._tailor_guarded = True


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
        return True
    except ValueError:
        return False


_OWN: set = set()
if os.environ.get("TAILOR_NETGUARD") == "1":
    install()
