"""The OTA bundle file: one signed text file, readable with ``cat`` (docs/ota.md).

::

    edged-ota-signature: 8c1f0e9ad35b2f47 <base64 Ed25519 signature, 64 bytes>
    format: edged-ota-bundle/1              <- the signed body starts here
    version: 42
    created: 2026-11-21T20:00:00Z
    expires: 2026-12-21T20:00:00Z
    targets: device:pi-kitchen group:beta   (optional: default every device)
    min-edged-version: 0.1.0                (optional)
    comment: new voice for the beta group   (optional)
                                            <- an empty line ends the metadata
    [gemini]                                <- the config fragment, admin-file schema,
    voice = "Puck"                             byte for byte what the owner wrote

The first line is the envelope: which key signed, and the signature over **every byte after
that line** (the body). Reading a bundle is ordered so that nothing an attacker wrote is
interpreted before it is known to come from a trusted key: the size cap, then the envelope line
(a fixed ASCII grammar), then the signature, and only then the metadata and the TOML. The
config bytes become the device's override file verbatim, comments included.
"""

from __future__ import annotations

import base64
import binascii
import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nacl.signing import SigningKey

    from edged.ota.keys import TrustedKeys

MAX_BUNDLE_BYTES = 32 * 1024     # also fits a control request (base64) under its 64 KiB cap
FORMAT = "edged-ota-bundle/1"
SIG_PREFIX = b"edged-ota-signature: "
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_SIG_LINE = re.compile(rb"edged-ota-signature: ([0-9a-f]{16}) ([A-Za-z0-9+/]{86}==)")
_TARGET = re.compile(r"(device|group):[A-Za-z0-9._-]{1,64}")
_VERSION = re.compile(r"\d{1,6}(\.\d{1,6}){0,3}")
_FIELDS = ("format", "version", "created", "expires", "targets", "min-edged-version", "comment")
_REQUIRED = ("format", "version", "created", "expires")


class BundleError(Exception):
    """A bundle that is refused. ``reason`` is a stable code (metrics, tests, the pull job);
    the message says what is wrong and how to fix it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Meta:
    version: int
    created: datetime
    expires: datetime
    targets: tuple[str, ...] = ()
    min_edged_version: str | None = None
    comment: str = ""

    def lines(self) -> list[str]:
        out = [f"format: {FORMAT}", f"version: {self.version}",
               f"created: {fmt_time(self.created)}", f"expires: {fmt_time(self.expires)}"]
        if self.targets:
            out.append(f"targets: {' '.join(self.targets)}")
        if self.min_edged_version:
            out.append(f"min-edged-version: {self.min_edged_version}")
        if self.comment:
            out.append(f"comment: {self.comment}")
        return out


@dataclass(frozen=True, slots=True)
class Bundle:
    """A bundle read from bytes; ``verified`` only when it came out of :func:`verify`."""

    raw: bytes
    key_id: str
    meta: Meta
    config_bytes: bytes
    config: dict[str, Any] = field(repr=False)
    verified: bool = False


def fmt_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(value: str, what: str) -> datetime:
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise BundleError("bad_metadata", f"{what}: {value!r} is not a UTC time like "
                          "2026-11-21T20:00:00Z") from None


def version_tuple(v: str) -> tuple[int, ...]:
    """``0.1.0`` -> (0, 1, 0); edged's own versions are plain dotted numbers."""
    return tuple(int(p) for p in v.split("."))


def split(raw: bytes) -> tuple[str, bytes, bytes]:
    """(key id, signature, body) from the envelope line; checks the size cap first.
    Nothing after the first line is looked at."""
    if len(raw) > MAX_BUNDLE_BYTES:
        raise BundleError("too_large", f"bundle is {len(raw)} bytes; the limit is "
                          f"{MAX_BUNDLE_BYTES} (a config fragment is a few KiB: is this the "
                          "right file?)")
    line, nl, body = raw.partition(b"\n")
    m = _SIG_LINE.fullmatch(line)
    if not nl or m is None:
        if not line.startswith(SIG_PREFIX):
            raise BundleError("unsigned", "not a signed edged OTA bundle: the first line must "
                              "be 'edged-ota-signature: KEYID SIGNATURE' (make bundles with "
                              "`edged ota sign`)")
        raise BundleError("bad_signature", "the signature line is malformed (a 16-hex-digit "
                          "key id and a base64 Ed25519 signature); was the file edited?")
    try:
        sig = base64.b64decode(m.group(2), validate=True)
    except binascii.Error:
        raise BundleError("bad_signature", "the signature is not valid base64") from None
    return m.group(1).decode("ascii"), sig, body


def verify(raw: bytes, trusted: TrustedKeys) -> Bundle:
    """Check the size, the signature against ``trusted``, then parse. Raises BundleError."""
    from nacl.exceptions import BadSignatureError

    kid, sig, body = split(raw)
    vk = trusted.keys.get(kid)
    if vk is None:
        known = ", ".join(sorted(trusted.keys)) or "none"
        raise BundleError("unknown_key", f"signed by key {kid}, which this device does not "
                          f"trust (trusted in {trusted.directory}: {known}); install its "
                          f".pub file there, or sign with a trusted key")
    try:
        vk.verify(body, sig)
    except BadSignatureError:
        raise BundleError("bad_signature", f"the signature by key {kid} does not match the "
                          "content: the bundle was modified after signing (or damaged in "
                          "transit); fetch or sign it again") from None
    meta, config_bytes, config = parse_body(body)
    return Bundle(raw, kid, meta, config_bytes, config, verified=True)


def parse_body(body: bytes) -> tuple[Meta, bytes, dict[str, Any]]:
    """Metadata lines, an empty line, then the config TOML (only ever called on bytes whose
    signature was checked, except by ``edged ota inspect``, which says so)."""
    head, sep, config_bytes = body.partition(b"\n\n")
    if not sep:
        raise BundleError("bad_metadata", "no empty line between the metadata and the config")
    try:
        head_text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BundleError("bad_metadata", "metadata must be ASCII") from None
    fields: dict[str, str] = {}
    for line in head_text.split("\n"):
        name, colon, value = line.partition(": ")
        if not colon or name not in _FIELDS:
            raise BundleError("bad_metadata", f"metadata line {line!r}: expected 'NAME: "
                              f"value' with NAME one of {', '.join(_FIELDS)}")
        if name in fields:
            raise BundleError("bad_metadata", f"metadata field {name!r} appears twice")
        fields[name] = value
    missing = [f for f in _REQUIRED if f not in fields]
    if missing:
        raise BundleError("bad_metadata", f"metadata lacks {', '.join(missing)}")
    if fields["format"] != FORMAT:
        raise BundleError("bad_metadata", f"format {fields['format']!r} is not {FORMAT!r}; "
                          "this edged is too old for the bundle, or it is not a bundle")
    meta = make_meta(fields["version"], parse_time(fields["created"], "created"),
                     parse_time(fields["expires"], "expires"),
                     fields.get("targets", "").split(), fields.get("min-edged-version"),
                     fields.get("comment", ""))
    try:
        config = tomllib.loads(config_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        raise BundleError("invalid_toml", "the config is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise BundleError("invalid_toml", f"the config is not valid TOML: {e}") from None
    return meta, config_bytes, config


def make_meta(version: str | int, created: datetime, expires: datetime,
              targets: list[str] | tuple[str, ...] = (), min_edged_version: str | None = None,
              comment: str = "") -> Meta:
    """Validated metadata (the same rules when signing and when reading)."""
    v = str(version)
    if not v.isdigit() or not 0 < int(v) < 2**63:
        raise BundleError("bad_metadata", f"version {v!r}: a positive whole number, higher "
                          "than every bundle sent before (e.g. a counter or YYYYMMDDNN)")
    if expires <= created:
        raise BundleError("bad_metadata", "expires must be after created")
    for t in targets:
        if not _TARGET.fullmatch(t):
            raise BundleError("bad_metadata", f"target {t!r}: use device:ID or group:NAME "
                              "(letters, digits, '.', '_', '-')")
    if min_edged_version is not None and not _VERSION.fullmatch(min_edged_version):
        raise BundleError("bad_metadata", f"min-edged-version {min_edged_version!r}: a "
                          "dotted version like 0.1.0")
    if len(comment) > 200 or not comment.isprintable():
        raise BundleError("bad_metadata", "comment: one printable line of at most 200 "
                          "characters")
    return Meta(int(v), created, expires, tuple(targets), min_edged_version, comment)


def sign(config_bytes: bytes, meta: Meta, key: SigningKey) -> bytes:
    """The bundle for ``config_bytes`` (checked to be UTF-8 TOML) signed by ``key``."""
    from edged.ota.keys import key_id

    try:
        tomllib.loads(config_bytes.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BundleError("invalid_toml", f"the config is not valid UTF-8 TOML: {e}") from None
    body = ("\n".join(meta.lines()) + "\n\n").encode("ascii") + config_bytes
    sig = key.sign(body).signature
    raw = (SIG_PREFIX + key_id(bytes(key.verify_key)).encode() + b" "
           + base64.b64encode(sig) + b"\n" + body)
    if len(raw) > MAX_BUNDLE_BYTES:
        raise BundleError("too_large", f"the bundle would be {len(raw)} bytes; the limit is "
                          f"{MAX_BUNDLE_BYTES}")
    return raw
