"""Project settings only the operator sets (an admin key): the plan, the quotas and where a
project's data lives. A tenant's key may read them and may send them back unchanged, never
change them: a tenant that could would lift its own limits, pick the cheapest plan, or make
the control plane connect wherever it likes.

Addresses the control plane connects to (a page server, a safekeeper) are checked here too:
a host name or an IP address, nothing else (no scheme, path, credentials, whitespace or
control characters), and, when the operator lists allowed hosts, one of those.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from selkie import model
from selkie.errors import Forbidden, InvalidInput

OPERATOR_SETTINGS = frozenset(
    {
        "plan",
        "max_cu",
        "max_active_endpoints",
        "compute_time_limit_seconds",
        "storage_limit_bytes",
        "storage_mode",
        "page_server_address",
        "page_server_port",
        "safekeeper_url",
    }
)

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")


def check_operator_settings(
    who: model.Principal, data: Mapping[str, Any], current: model.ProjectSettings | None
) -> None:
    """Forbidden when a tenant's key asks to change an operator setting (sending the value
    in force, or the default on a new project, is not a change)."""
    if who.admin:
        return
    base = current or model.ProjectSettings()
    changed = sorted(
        name
        for name in OPERATOR_SETTINGS & set(data)
        if _comparable(data[name]) != _comparable(getattr(base, name))
    )
    if changed:
        raise Forbidden(
            f"{', '.join(changed)} {'is' if len(changed) == 1 else 'are'} set by the operator; "
            "changing it needs an admin key"
        )


def _comparable(value: Any) -> Any:
    return value.value if isinstance(value, model.StorageMode) else value


def check_host(name: str, value: str, allowed: Collection[str] = ()) -> str:
    """A host name or an IP address (and one of ``allowed`` when the operator lists any)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{name} must be a host name or an IP address")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if len(value) > 253 or not _HOSTNAME.match(value):
            raise InvalidInput(
                f"{name} must be a host name or an IP address (no scheme, port, path or spaces)"
            ) from None
    if allowed and value.lower() not in {a.lower() for a in allowed}:
        raise InvalidInput(f"{name} {value!r} is not one of the hosts this operator allows")
    return value


def check_url(name: str, value: str, allowed: Collection[str] = ()) -> str:
    """An http(s) URL of an allowed host: no credentials, query or fragment."""
    if any(ord(c) < 33 or ord(c) == 127 for c in value):
        raise InvalidInput(f"{name} must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"{name} is not a valid URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{name} must be an http:// or https:// URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidInput(f"{name} must not carry credentials, a query or a fragment")
    check_host(name, parts.hostname, allowed)
    if port is not None and not 1 <= port <= 65535:
        raise InvalidInput(f"{name} has a port out of range")
    return value


def check_addresses(settings: model.ProjectSettings, allowed: Collection[str] = ()) -> None:
    """The addresses in a project's settings are ones the control plane may connect to."""
    if settings.page_server_address is not None:
        check_host("page_server_address", settings.page_server_address, allowed)
    if settings.safekeeper_url:
        check_url("safekeeper_url", settings.safekeeper_url, allowed)
