"""URL hygiene: what may be recorded about where a byte came from."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def strip_secrets(url: str) -> str:
    """Drop user info and the whole query string (SAS tokens, presigned-URL signatures, keys).

    Provenance never needs the query of a blob URL, and dropping all of it is safer than a list of
    known secret parameter names that a new signer could extend.
    """
    parts = urlsplit(url)
    if not parts.scheme or parts.scheme == "file":
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
