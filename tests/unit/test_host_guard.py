"""The loopback runner's Host check: which names count as this machine (DNS rebinding defence)."""

from __future__ import annotations

from typing import Any

import pytest

from cataract_inference.host_guard import host_name, is_loopback_host


@pytest.mark.parametrize(
    ("header", "name"),
    [("localhost:8080", "localhost"), ("[::1]:8080", "::1"), ("[0:0:0:0:0:0:0:1]", "0:0:0:0:0:0:0:1"),
     ("127.0.0.2", "127.0.0.2"), (" Example.COM:1 ", "example.com"), ("::1", None), ("[::1", None)],
)  # fmt: skip
def test_host_name_drops_the_port_and_the_brackets(header: str, name: str | None) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    "header",
    ["localhost", "LOCALHOST:9000", "127.0.0.1:8080", "127.0.0.2", "127.255.255.254:1", "[::1]:8080",
     "[0:0:0:0:0:0:0:1]", "localhost:", "127.0.0.1:65535"],
)  # fmt: skip
def test_every_loopback_address_is_this_machine(header: str) -> None:
    """`serve --host 127.0.0.2` must answer requests addressed to 127.0.0.2, not only to 127.0.0.1."""
    assert is_loopback_host(header)


@pytest.mark.parametrize(
    "header",
    ["rebound.attacker.example", "127.0.0.1.nip.io", "localhost.attacker.example", "10.0.0.1:8080", "[::2]", "",
     "127.1", "0.0.0.0", "[::]", "localhost:8080:1", "notlocalhost", "foo.localhost:8080"],
)  # fmt: skip
def test_any_other_name_is_refused(header: str) -> None:
    assert not is_loopback_host(header)


@pytest.mark.parametrize(
    "header",
    ["localhost:junk", "::1", "127.0.0.1:99999999", "[::1", "[::1]junk", "[127.0.0.1]", "localhost:8O80",
     "127.0.0.1:\u0668\u0660", "localhost: 80", "localhost:" + "1" * 4301, "[::1]:" + "0" * 4400],
)  # fmt: skip
def test_a_host_that_is_not_a_name_with_a_port_of_digits_is_refused(header: str) -> None:
    """RFC 9112 3.2: a 400 for a Host whose value is invalid; these were answered, their name being loopback."""
    assert not is_loopback_host(header)


@pytest.mark.parametrize(
    ("hosts", "status"),
    [([b"localhost:8080"], 200), ([], 400), ([b"localhost", b"rebound.attacker.example"], 400),
     ([b"rebound.attacker.example"], 400), ([b"localhost", b"localhost"], 400)],
)  # fmt: skip
def test_the_guard_answers_only_a_request_with_exactly_one_loopback_host(hosts: list[bytes], status: int) -> None:
    """Two Host headers are ambiguous (a proxy may route by the other one), and none names nothing: both refused."""
    import asyncio
    import json

    from cataract_inference.host_guard import LoopbackHostGuard

    async def app(scope: dict[str, object], receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"host", h) for h in hosts] + [(b"accept", b"*/*")]}
    asyncio.run(LoopbackHostGuard(app, "not a diagnosis")(scope, None, send))
    assert sent[0]["status"] == status
    if status == 400:
        assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_host"
    else:
        assert sent[1]["body"] == b"served"
