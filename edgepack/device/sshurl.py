"""A strict grammar for ``ssh://user@host[:port]``, so nothing in the address can become an ssh option.

OpenSSH reads a login or host that starts with '-' as an option (``-oProxyCommand=...`` runs a command).
Besides ending ssh/scp options with ``--`` (edgepack.device.remote), the address itself must be plain:

    user   [A-Za-z_][A-Za-z0-9._-]{0,31}           (optional; no leading '-', no ':' password)
    host   a DNS name (letters, digits, '-' inside labels, '.' between them), an IPv4 address,
           or an IPv6 address in brackets
    port   1-65535, digits only
"""

from __future__ import annotations

import ipaddress
import re

from edgepack.errors import InputError

_USER = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}")
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_URL = re.compile(r"^ssh://(?:(?P<user>[^@/]*)@)?(?P<host>\[[^\]/]*\]|[^:/@\[\]]*)(?::(?P<port>[^/]*))?/?$")
_HINT = "use ssh://user@host or ssh://user@host:2222 (user: letters, digits, '.', '_', '-'; not starting with '-')"


def _host_ok(host: str) -> bool:
    if host.startswith("["):
        try:
            return isinstance(ipaddress.ip_address(host[1:-1]), ipaddress.IPv6Address)
        except ValueError:
            return False
    if not host or len(host) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in host.rstrip(".").split("."))


def parse(url: str) -> tuple[str | None, str, int]:
    """(user or None, host, port) of ``ssh://user@host[:port]``; InputError naming the bad part otherwise.

    An IPv6 host is returned without brackets."""
    m = _URL.fullmatch(url) if isinstance(url, str) and url.isascii() else None
    if m is None:
        if isinstance(url, str) and url.lower().startswith("adb:"):
            raise InputError(f"edgepack bench reaches devices over SSH; {url!r} is an adb address",
                             hint="for an Android phone, docs/android.md gives the adb + benchmark_model commands")
        raise InputError(f"bad device address {url!r}", hint=_HINT)
    user, host, port = m.group("user"), m.group("host"), m.group("port")
    if user is not None and not _USER.fullmatch(user):
        raise InputError(f"bad user name {user!r} in device address {url!r}", hint=_HINT)
    if not _host_ok(host):
        raise InputError(f"bad host name {host!r} in device address {url!r}", hint=_HINT)
    if port is not None and not (port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise InputError(f"bad port {port!r} in device address {url!r}", hint="the port is a number from 1 to 65535")
    return user, host.strip("[]"), int(port) if port else 22
