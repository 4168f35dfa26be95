"""One sample's tar members, parsed by hand from the bytes of its range in a shard."""

from __future__ import annotations

import tarfile

from geopile.stream.index import TAR_BLOCK


def parse_members(data: bytes | memoryview, want: tuple[str, ...] | None = None,
                  trusted: bool = False) -> dict[str, bytes | memoryview]:
    """The members of one sample from its tar bytes: ``{extension: payload}``.

    Parsed by hand: ``tarfile`` costs about 0.4 ms a sample to set up, as much as decoding
    the JPEG. Only what GeoPile's writer produces is accepted (USTAR regular files). ``want``
    stops at the first member with one of these extensions, and returns views into ``data``
    (no copy); otherwise payloads are bytes. Each header's checksum is verified unless
    ``trusted`` (the sample's bytes already matched their xxh3, which covers the headers).
    """
    members: dict[str, bytes | memoryview] = {}
    pos, end = 0, len(data)
    while pos + TAR_BLOCK <= end:
        header = bytes(data[pos:pos + TAR_BLOCK])
        if header[0] == 0 and header.count(0) == TAR_BLOCK:
            break  # the archive's end blocks
        try:
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            if not trusted:
                stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
        except ValueError as err:
            raise tarfile.ReadError(f"unparsable header at byte {pos}") from err
        if not trusted and stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise tarfile.ReadError(f"bad header checksum at byte {pos}")
        try:
            name = header[:100].split(b"\0", 1)[0].decode()
            prefix = header[345:500].split(b"\0", 1)[0].decode()
        except UnicodeDecodeError as err:
            raise tarfile.ReadError(f"member name at byte {pos} is not UTF-8") from err
        if header[156:157] not in (b"0", b"\0"):
            raise tarfile.ReadError(f"member {name!r} is not a regular file")
        body = pos + TAR_BLOCK
        if size < 0 or body + size > end:
            raise tarfile.ReadError(f"member {name!r} is truncated")
        base = (f"{prefix}/{name}" if prefix else name).rsplit("/", 1)[-1]
        if "." not in base:
            raise tarfile.ReadError(f"member {name!r} has no extension")
        ext = base.split(".", 1)[1]
        payload = data[body:body + size]
        members[ext] = payload if want is not None else bytes(payload)
        if want is not None and ext in want:
            return members
        pos = body + -(-size // TAR_BLOCK) * TAR_BLOCK
    if not members:
        raise tarfile.ReadError("no members")
    return members
