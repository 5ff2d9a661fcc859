"""`serve` on loopback answers only requests addressed to this machine by a loopback name.

A web page the user visits can point a hostname of its own at 127.0.0.1 (DNS rebinding); the browser then treats
the runner as that page's origin and lets the page read its answers. Such requests carry the page's hostname in
``Host``, so refusing every Host but localhost and loopback addresses (127.0.0.0/8, [::1]) closes that door. Not
used on Lambda, where API Gateway sets the host.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from .api import error_content, note_refusal


def host_name(value: str) -> str | None:
    """The name part of a Host header, lowercase, without its port and without the brackets around an IPv6 address;
    None when the header is not a host with an optional port (RFC 9110 7.2: ``uri-host [ ":" port ]``: an IPv6
    address only in brackets, a port only of digits, here at most 65535), which gets a 400 (RFC 9112 3.2)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    port = rest[1:]
    if rest and not (
        rest.startswith(":")
        and (port == "" or (len(port) <= 5 and port.isascii() and port.isdigit() and int(port) <= 65535))
    ):
        return None
    return name


def is_loopback_host(value: str) -> bool:
    """Whether a Host header names this machine: ``localhost`` or a loopback address, with or without a port."""
    name = host_name(value)
    if name is None:
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class LoopbackHostGuard:
    """ASGI middleware: a JSON 400 ``invalid_host`` for any Host that is not a loopback name."""

    def __init__(self, app: Any, disclaimer: str) -> None:
        self.app, self.disclaimer = app, disclaimer

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            hosts = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"]
            if len(hosts) != 1 or not is_loopback_host(hosts[0]):
                await self._refuse(send)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, send: Any) -> None:
        note_refusal(400, "invalid_host")
        message = (
            "this runner answers only requests to localhost or a loopback address such as 127.0.0.1 or [::1] "
            "(the Host header: one, a name or address with an optional port of digits)"
        )
        body, headers = error_content("invalid_host", message, None, self.disclaimer)
        payload = json.dumps(body).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": 400, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
