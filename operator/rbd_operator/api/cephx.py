"""cephx keys as text: the only check a key gets before it reaches librados, a file or a host."""

from __future__ import annotations

import base64
import binascii
import struct


def valid_cephx_key(key: str) -> bool:
    """Whether `key` decodes as a cephx secret (type, created, length, bytes).

    librados prints an undecodable key to stderr, whatever its log settings:
    such a key must never reach it.
    """
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return False
    if len(raw) < 12:
        return False
    kind, length = struct.unpack_from("<H", raw, 0)[0], struct.unpack_from("<H", raw, 10)[0]
    return kind == 1 and length == len(raw) - 12 and length > 0
