"""Machine-readable opt-outs a crawler honours, per host: robots.txt (RFC 9309) and TDMRep (the W3C TDM
Reservation Protocol: the `tdm-reservation` response header and `/.well-known/tdmrep.json`), beside the
X-Robots-Tag header (operators/download.py: `is_disallowed`).

What is read here, not fetched: a `HostPolicy` holds what a host answered for its two policy files (status and
body), small and picklable, so one fetch per host serves every worker of a run (operators/hosts.py passes it
around). Parsing is lazy and cached in the object.

robots.txt, as RFC 9309 says (§2.3.1): a 2xx body is parsed (its first 500 KiB) by protego, which implements
the RFC's matching (the group of the most specific user-agent, longest match, Allow wins a tie, `*` and `$`);
a 4xx ("unavailable") allows everything; a 5xx or no answer ("unreachable") means complete disallow for the time
being (the caller retries the row later, see `Downloader`). 429 is taken as a server error, as major crawlers
do: it asks for a later visit, not for a free pass.

TDMRep (§3 of the final report): `tdmrep.json` is an array of rules `{"location": PATTERN, "tdm-reservation":
0|1, "tdm-policy": URL}`, tried in order; the first whose location (a path pattern with robots.txt's `*` and
`$`) matches the request path decides. No file, an unreadable file, or no matching rule: no reservation there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from email.message import Message

from protego import Protego

ROBOTS_TXT, TDM_REP, X_ROBOTS_TAG = "robots_txt", "tdm_rep", "x_robots_tag"
SIGNALS = (ROBOTS_TXT, TDM_REP, X_ROBOTS_TAG)
ROBOTS_PATH = "/robots.txt"
TDMREP_PATH = "/.well-known/tdmrep.json"
MAX_POLICY_BYTES = 500 * 1024  # RFC 9309 §2.5: parse at least the first 500 KiB


def robots_unreachable(status: int | None) -> bool:
    """An answer for robots.txt that means "complete disallow, for now" (RFC 9309 §2.3.1.4): 5xx, 429, none."""
    return status is None or status >= 500 or status == 429


@dataclass
class HostPolicy:
    """What one origin (scheme://host:port) said about crawling it. `*_status` None: the file was not asked for
    (its signal is not honoured)."""

    robots_status: int | None = None
    robots: bytes | None = None
    tdmrep_status: int | None = None
    tdmrep: bytes | None = None
    _parsed: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_parsed"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _parsed={})

    def size(self) -> int:
        return len(self.robots or b"") + len(self.tdmrep or b"") + 64

    def robots_refusal(self, target: str, token: str | None) -> str | None:
        """Why robots.txt refuses `target` (path and query) to `token`, or None when it may be fetched."""
        status = self.robots_status
        if status is None or not 200 <= status < 300 or not self.robots:
            return None  # 3xx past the redirects followed, and 4xx: "unavailable", everything allowed
        parser = self._parsed.get("robots")
        if parser is None:
            text = self.robots[:MAX_POLICY_BYTES].decode("utf-8", errors="replace")
            parser = self._parsed["robots"] = Protego.parse(text)
        agent = token or "*"
        if parser.can_fetch("http://host" + target, agent):
            return None
        return f"robots.txt disallows {target} for user-agent {agent!r}"

    def tdm_refusal(self, target: str) -> str | None:
        """Why /.well-known/tdmrep.json reserves TDM rights on `target`, or None."""
        rules = self._parsed.get("tdmrep")
        if rules is None:
            rules = self._parsed["tdmrep"] = parse_tdmrep(self.tdmrep_status, self.tdmrep)
        path = target.split("?", 1)[0] or "/"
        for pattern, location, reserved, policy in rules:
            if pattern.match(path):
                if not reserved:
                    return None
                return f"{TDMREP_PATH} reserves TDM rights on {location!r}" + (f" (policy {policy})" if policy else "")
        return None


def _path_pattern(location: str) -> re.Pattern:
    """robots.txt's path pattern: a prefix, `*` any run of characters, `$` at the end anchors it."""
    anchored = location.endswith("$")
    body = location[:-1] if anchored else location
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    return re.compile(regex + ("$" if anchored else ""))


def parse_tdmrep(status: int | None, body: bytes | None) -> list[tuple[re.Pattern, str, bool, str | None]]:
    """The rules of a tdmrep.json answer, in order; none unless it is a 2xx JSON array of rule objects."""
    if status is None or not 200 <= status < 300 or not body:
        return []
    try:
        data = json.loads(body[:MAX_POLICY_BYTES].decode("utf-8", errors="replace"))
    except ValueError:
        return []
    rules = []
    for rule in data if isinstance(data, list) else []:
        if not isinstance(rule, dict) or not isinstance(rule.get("location"), str):
            continue
        location = rule["location"] if rule["location"].startswith("/") else "/" + rule["location"]
        reserved = str(rule.get("tdm-reservation", "0")).strip() == "1"
        policy = rule.get("tdm-policy") if isinstance(rule.get("tdm-policy"), str) else None
        rules.append((_path_pattern(location), rule["location"], reserved, policy))
    return rules


def tdm_header_refusal(headers: Message) -> str | None:
    """The `tdm-reservation: 1` response header (TDMRep §3.2), with its `tdm-policy` when given."""
    values = [v.strip() for v in headers.get_all("tdm-reservation") or []]
    if "1" not in values:
        return None
    policy = headers.get("tdm-policy")
    return "tdm-reservation: 1 header" + (f" (tdm-policy: {policy})" if policy else "")
