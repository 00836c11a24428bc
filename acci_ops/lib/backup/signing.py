"""Telling acci_ops's own backups from anyone else's: HMAC-SHA256 over manifests and validation records.

Anyone who can write to the bucket can put objects that look like backups. Manifests and
validation records therefore carry a ``signature`` field: HMAC-SHA256, with a key only acci_ops
holds (``ACCI_BACKUP_SIGNING_KEY``), over the canonical JSON of every other field (keys sorted,
no whitespace, ASCII). The signature lives inside the JSON rather than in a sidecar so that the
manifest stays one object written in one PUT (it is the backup's commit marker: there is no
moment where a manifest exists without its signature), an offsite copy of the manifest's bytes
carries it along, and nobody can swap the signature object independently of the document.

Format: ``hmac-sha256:<key id>:<64 hex>``; the key id (16 hex digits, an HMAC of a fixed label,
so it reveals nothing about the key) says which key signed, which makes rotation possible: the
variable may hold several comma-separated keys, the first signs, all of them verify.

A bucket writer without the key can delete backups or replace their bytes (which the manifest's
sha256 then catches), but cannot make acci_ops trust a manifest or record it did not write.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

from acci_ops.lib.core.errors import ConfigError

ALGORITHM = "hmac-sha256"
MIN_KEY_CHARS = 32
KEY_VARIABLE = "ACCI_BACKUP_SIGNING_KEY"
NO_KEY_WARNING = (f"{KEY_VARIABLE} is not set: backups cannot be authenticated; retention deletes nothing "
                  "and DR needs an explicit backup")

_SIGNATURE = re.compile(rf"^{ALGORITHM}:(?P<key_id>[0-9a-f]{{16}}):(?P<mac>[0-9a-f]{{64}})$")

# What a signature check can conclude; only SIGNED is trusted.
SIGNED = "signed"
UNSIGNED = "unsigned"
BADLY_SIGNED = "badly signed"


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: every field except ``signature``, in one deterministic form."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


class Keyring:
    """The signing key (and older keys still accepted while rotating). Never shows a key: not in
    ``repr``, ``str`` or any error."""

    __slots__ = ("_keys",)

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigError(f"{KEY_VARIABLE}: no key given")
        self._keys = [(self._key_id(k), k) for k in keys]

    @staticmethod
    def _key_id(key: bytes) -> str:
        return hmac.new(key, b"acci-ops signing key id", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_secret(cls, value: str | None) -> Keyring | None:
        """``None`` when no key is configured; comma-separated keys, the first one signs."""
        if value is None or not value.strip():
            return None
        keys = [part.strip() for part in value.split(",") if part.strip()]
        if any(len(k) < MIN_KEY_CHARS for k in keys):
            raise ConfigError(f"{KEY_VARIABLE}: every key must be at least {MIN_KEY_CHARS} characters long")
        return cls([k.encode() for k in keys])

    @property
    def key_id(self) -> str:
        """Id of the key that signs (safe to show)."""
        return self._keys[0][0]

    def __repr__(self) -> str:
        return f"Keyring(signing key id {self.key_id}, {len(self._keys)} key(s))"

    __str__ = __repr__

    def signature(self, doc: Mapping[str, Any]) -> str:
        key_id, key = self._keys[0]
        return f"{ALGORITHM}:{key_id}:{hmac.new(key, canonical_json(doc), hashlib.sha256).hexdigest()}"

    def sign(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``doc`` with its ``signature`` field set."""
        return {**{k: v for k, v in doc.items() if k != "signature"}, "signature": self.signature(doc)}

    def verify(self, doc: Mapping[str, Any]) -> str:
        """SIGNED, UNSIGNED (no signature field) or BADLY_SIGNED (anything else)."""
        signature = doc.get("signature")
        if signature is None:
            return UNSIGNED
        match = _SIGNATURE.match(signature) if isinstance(signature, str) else None
        if not match:
            return BADLY_SIGNED
        key_id, mac = match["key_id"], match["mac"]
        for known_id, key in self._keys:
            if hmac.compare_digest(known_id, key_id):
                expected = hmac.new(key, canonical_json(doc), hashlib.sha256).hexdigest()
                return SIGNED if hmac.compare_digest(expected, mac) else BADLY_SIGNED
        return BADLY_SIGNED


def verify(keyring: Keyring | None, doc: Mapping[str, Any]) -> str:
    """Signature status of a parsed document; without a key nothing can be authenticated."""
    if keyring is None:
        return "unverifiable (no signing key)" if doc.get("signature") is not None else UNSIGNED
    return keyring.verify(doc)
