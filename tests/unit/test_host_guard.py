"""The loopback runner's Host check: which names count as this machine (DNS rebinding defence)."""

from __future__ import annotations

import pytest

from cataract_inference.host_guard import host_name, is_loopback_host


@pytest.mark.parametrize(
    ("header", "name"),
    [("localhost:8080", "localhost"), ("[::1]:8080", "::1"), ("[0:0:0:0:0:0:0:1]", "0:0:0:0:0:0:0:1"),
     ("127.0.0.2", "127.0.0.2"), (" Example.COM:1 ", "example.com"), ("::1", "::1")],
)  # fmt: skip
def test_host_name_drops_the_port_and_the_brackets(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    "header",
    ["localhost", "LOCALHOST:9000", "127.0.0.1:8080", "127.0.0.2", "127.255.255.254:1", "[::1]:8080",
     "[0:0:0:0:0:0:0:1]", "::1"],
)  # fmt: skip
def test_every_loopback_address_is_this_machine(header: str) -> None:
    """`serve --host 127.0.0.2` must answer requests addressed to 127.0.0.2, not only to 127.0.0.1."""
    assert is_loopback_host(header)


@pytest.mark.parametrize(
    "header",
    ["rebound.attacker.example", "127.0.0.1.nip.io", "localhost.attacker.example", "10.0.0.1:8080", "[::2]", "",
     "127.1", "0.0.0.0", "[::]", "localhost:8080:1"],
)  # fmt: skip
def test_any_other_name_is_refused(header: str) -> None:
    assert not is_loopback_host(header)
