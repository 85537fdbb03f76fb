"""Ed25519 keys for OTA bundles: generating a pair, key ids, and the trusted-keys directory.

Files are one base64 line after ``#`` comment lines, so an owner can read, copy and diff them:

* ``NAME.key`` (0600, stays on the owner's laptop): the 32-byte Ed25519 seed.
* ``NAME.pub`` (goes to ``ota.trusted_keys_dir`` on each device): the 32-byte public key.

A key id is the first 8 bytes of SHA-256 over the public key, in hex. A bundle names the key
that signed it by this id, so a device with several trusted keys (the old and the new one while
a key is rotated) knows which to check without trying each.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

PUBLIC_SUFFIX = ".pub"
SECRET_SUFFIX = ".key"


class KeyFileError(Exception):
    """A key file that cannot be used; the message names the file and the fix."""


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def _read_b64(path: Path, size: int, what: str) -> bytes:
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path}: cannot read {what}: {e}") from None
    body = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    try:
        raw = base64.b64decode(body[0], validate=True) if len(body) == 1 else b""
    except binascii.Error:
        raw = b""
    if len(raw) != size:
        raise KeyFileError(f"{path}: not an edged OTA {what} (expected one base64 line of "
                        f"{size} bytes after # comments; make one with `edged ota keygen`)")
    return raw


def load_signing_key(path: Path) -> SigningKey:
    return SigningKey(_read_b64(path, 32, "secret key"))


def load_public_key(path: Path) -> VerifyKey:
    return VerifyKey(_read_b64(path, 32, "public key"))


def generate(out_dir: Path, name: str) -> tuple[Path, Path, str]:
    """Write ``NAME.key`` (0600) and ``NAME.pub``; refuses to overwrite. Returns
    (secret path, public path, key id)."""
    if not name or not all(c.isalnum() or c in "._-" for c in name):
        raise KeyFileError(f"key name {name!r}: use letters, digits, '.', '_' or '-'")
    secret, public = out_dir / f"{name}{SECRET_SUFFIX}", out_dir / f"{name}{PUBLIC_SUFFIX}"
    for p in (secret, public):
        if p.exists():
            raise KeyFileError(f"{p} exists; choose another --name (a key is never overwritten)")
    out_dir.mkdir(parents=True, exist_ok=True)
    sk = SigningKey.generate()
    pk = bytes(sk.verify_key)
    kid = key_id(pk)
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"# edged OTA SECRET signing key {kid} ({name}). Keep it offline: whoever has\n"
                "# it can reconfigure every device that trusts its .pub file.\n"
                f"{base64.b64encode(bytes(sk)).decode()}\n")
    public.write_text(f"# edged OTA public key {kid} ({name}); install it in the devices'\n"
                      f"# ota.trusted_keys_dir (default /etc/edged/ota-keys/)\n"
                      f"{base64.b64encode(pk).decode()}\n", encoding="ascii")
    return secret, public, kid


@dataclass(frozen=True, slots=True)
class TrustedKeys:
    """The public keys a device accepts bundles from, by key id."""

    keys: dict[str, VerifyKey]
    directory: Path
    problems: tuple[str, ...] = ()    # key files that were skipped, and why

    @classmethod
    def load(cls, directory: Path) -> TrustedKeys:
        """Every ``*.pub`` in ``directory``. A file that anyone but its owner may write is
        skipped (whoever can write it could add their own key), as is an unreadable one."""
        keys: dict[str, VerifyKey] = {}
        problems: list[str] = []
        try:
            files = sorted(directory.glob(f"*{PUBLIC_SUFFIX}"))
        except OSError as e:
            return cls({}, directory, (f"{directory}: {e.strerror}",))
        for path in files:
            try:
                mode = path.stat().st_mode
                if mode & (stat.S_IWGRP | stat.S_IWOTH):
                    problems.append(f"{path}: skipped, writable by group or others "
                                    f"(chmod 0644 {path})")
                    continue
                vk = load_public_key(path)
            except (OSError, KeyFileError) as e:
                problems.append(str(e))
                continue
            keys[key_id(bytes(vk))] = vk
        return cls(keys, directory, tuple(problems))
