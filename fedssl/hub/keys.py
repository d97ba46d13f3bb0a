"""API keys: the secret's format and hash (only hashes are stored) and the authenticated caller."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["KEY_PREFIX", "KeyInfo", "hash_key"]

KEY_PREFIX = "fh_"


@dataclass(frozen=True)
class KeyInfo:
    """An authenticated caller."""

    key_id: str
    role: str
    owner: str
    participant: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
