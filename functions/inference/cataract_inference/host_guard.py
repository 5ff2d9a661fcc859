"""`serve` on loopback answers only requests addressed to this machine by a loopback name.

A web page the user visits can point a hostname of its own at 127.0.0.1 (DNS rebinding); the browser then treats
the runner as that page's origin and lets the page read its answers. Such requests carry the page's hostname in
``Host``, so refusing every Host but localhost, 127.0.0.1 and [::1] closes that door. Not used on Lambda, where API
Gateway sets the host.
"""

from __future__ import annotations

import json
from typing import Any

from .api import error_content, note_refusal

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(value: str) -> str:
    """The name part of a Host header: without the port, and without the brackets around an IPv6 address."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class LoopbackHostGuard:
    """ASGI middleware: a JSON 400 ``invalid_host`` for any Host that is not a loopback name."""

    def __init__(self, app: Any, disclaimer: str) -> None:
        self.app, self.disclaimer = app, disclaimer

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            hosts = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"]
            if len(hosts) != 1 or host_name(hosts[0]) not in LOOPBACK_NAMES:
                await self._refuse(send)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, send: Any) -> None:
        note_refusal(400, "invalid_host")
        message = "this runner answers only requests to localhost, 127.0.0.1 or [::1] (the Host header)"
        body, headers = error_content("invalid_host", message, None, self.disclaimer)
        payload = json.dumps(body).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": 400, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
