"""SSRF: webhook URLs are judged by the addresses they resolve to."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from inferq.errors import ConfigError, InvalidInput
from inferq.webhooks.ssrf import (
    UnsafeWebhookURL,
    check_webhook_url,
    effective_address,
    unsafe_reason,
)

REFUSED = [
    "http://127.0.0.1/",
    "http://[::1]/",
    "http://169.254.169.254/latest/meta-data",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://127.1/",
    "http://0177.0.0.1/",
    "http://localhost/",
    "http://localhost:6379/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[2002:7f00:1::]/",
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://100.64.0.1/",
    "http://100.100.100.200/",
    "http://168.63.129.16/",
    "http://[fd00::1]/",
    "http://[fd00:ec2::254]/",
    "http://[fe80::1]/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://192.0.2.1/",
    "ftp://x/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/",
    "http://user:pw@example.com/",
    "http://user@93.184.216.34/",
    "http:///path-only",
    "http://93.184.216.34:99999/",
    "http://93.184.216.34/a b",
    "",
]


@pytest.mark.parametrize("url", REFUSED)
def test_refused(url: str) -> None:
    with pytest.raises(UnsafeWebhookURL) as info:
        check_webhook_url(url, "")
    # An InvalidInput naming the field: the API turns it into a 422 naming ``webhook``.
    assert isinstance(info.value, InvalidInput)
    assert info.value.errors[0]["field"] == "webhook"
    assert info.value.errors[0]["message"]


@pytest.mark.parametrize(
    "url",
    ["http://93.184.216.34/", "https://93.184.216.34:8443/hook?x=1", "http://[2606:4700::1]/"],
)
def test_public_numeric_hosts_are_allowed(url: str) -> None:
    # Numeric hosts: getaddrinfo resolves them without DNS; no connection is made.
    addresses = check_webhook_url(url, "")
    assert addresses and all(unsafe_reason(ip) is None for ip in addresses)


def test_allowlist_lets_exactly_its_network_through() -> None:
    assert check_webhook_url("http://127.0.0.1:8080/", "127.0.0.1/32") == [
        ipaddress.ip_address("127.0.0.1")
    ]
    assert check_webhook_url("http://0x7f000001/", "127.0.0.1/32")  # same address
    with pytest.raises(UnsafeWebhookURL):
        check_webhook_url("http://[::1]/", "127.0.0.1/32")
    with pytest.raises(UnsafeWebhookURL):
        check_webhook_url("http://127.0.0.2/", "127.0.0.1/32")
    with pytest.raises(UnsafeWebhookURL):
        check_webhook_url("http://10.0.0.1/", "127.0.0.1/32, 192.168.0.0/16")
    assert check_webhook_url("http://[::1]/", "127.0.0.1/32,::1/128")


def test_wide_allowlist_never_opens_metadata() -> None:
    with pytest.raises(UnsafeWebhookURL):
        check_webhook_url("http://169.254.169.254/", "169.254.0.0/16")
    assert check_webhook_url("http://169.254.169.254/", "169.254.169.254/32")
    assert check_webhook_url("http://169.254.1.1/", "169.254.0.0/16")


def test_bad_allowlist_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        check_webhook_url("http://93.184.216.34/", "not-a-cidr")


def _fake_getaddrinfo(answers: dict[str, list[str]]) -> Any:
    def fake(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for addr in answers[host]:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            sockaddr = (addr, port, 0, 0) if family == socket.AF_INET6 else (addr, port)
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    return fake


def test_a_name_with_any_internal_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo({
        "public.example": ["93.184.216.34", "2606:2800:220:1::1"],
        "mixed.example": ["93.184.216.34", "::1"],
        "rebind.example": ["10.1.2.3"],
    }))
    assert len(check_webhook_url("https://public.example/hook", "")) == 2
    with pytest.raises(UnsafeWebhookURL, match="loopback"):
        check_webhook_url("https://mixed.example/hook", "")
    with pytest.raises(UnsafeWebhookURL, match="private"):
        check_webhook_url("https://rebind.example/hook", "")


def test_a_name_that_does_not_resolve_is_refused_and_retryable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo({}))
    with pytest.raises(UnsafeWebhookURL) as info:
        check_webhook_url("https://nowhere.invalid/", "")
    assert info.value.retryable


def test_refusals_of_addresses_are_not_retryable() -> None:
    with pytest.raises(UnsafeWebhookURL) as info:
        check_webhook_url("http://127.0.0.1/", "")
    assert not info.value.retryable


@pytest.mark.parametrize(
    ("address", "reaches"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::127.0.0.1", "127.0.0.1"),
        ("64:ff9b::a00:1", "10.0.0.1"),
        ("2002:a9fe:a9fe::", "169.254.169.254"),
        ("::1", "::1"),
        ("2606:4700::1", "2606:4700::1"),
    ],
)
def test_ipv6_forms_are_judged_by_the_ipv4_they_reach(address: str, reaches: str) -> None:
    assert effective_address(ipaddress.ip_address(address)) == ipaddress.ip_address(reaches)
