"""Wire-level helpers for the Live simulator: key casing, base64, framing, URL paths, TLS.

Everything here exists because the real SDK and the real server disagree with the obvious
choice (docs/simulator.md, "The wire rules it follows"): the SDK sends mixed snake/camel keys
and URL-safe base64, the server must answer with camelCase keys in binary frames, close
reasons are capped at 123 bytes, and the SDK only speaks ``wss``, so the simulator needs its
own trusted cert.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import json
import re
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Keys whose values are protobuf Struct / map data: their own keys are user data and must not
# be re-cased (a tool argument named ``file_name`` stays ``file_name``).
OPAQUE_KEYS = frozenset({
    "response", "args", "parameters", "parametersJsonSchema", "responseJsonSchema", "labels",
    "properties",
})

MAX_REASON_BYTES = 123   # RFC 6455: a close frame's payload is <= 125 bytes incl. the code

PATH_RE = re.compile(
    r"^/ws/google\."
    r"(?:ai\.generativelanguage\.(?P<gv>v1(?:alpha|beta)?\d*)\.GenerativeService\."
    r"BidiGenerateContent(?:Constrained)?"
    r"|cloud\.aiplatform\.(?P<vv>v1(?:alpha|beta)?\d*)\.LlmBidiService/BidiGenerateContent)$"
)


def camel(key: str) -> str:
    """snake_case → camelCase, the way protobuf JSON parsing accepts both spellings."""
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def normalise(value: Any, _opaque: bool = False) -> Any:
    """Re-case every key at every depth (except inside Struct/map values, see OPAQUE_KEYS)."""
    if isinstance(value, dict):
        if _opaque:
            return {k: normalise(v, _opaque=True) for k, v in value.items()}
        out = {}
        for k, v in value.items():
            ck = camel(k)
            out[ck] = normalise(v, _opaque=ck in OPAQUE_KEYS)
        return out
    if isinstance(value, list):
        return [normalise(v, _opaque) for v in value]
    return value


def b64decode(data: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not (the SDK sends URL-safe)."""
    s = data.strip().replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except binascii.Error as e:
        raise ValueError(f"invalid base64 in blob data: {e}") from e


def decode_blobs(value: Any) -> Any:
    """Replace every Blob's base64 ``data`` (a dict with ``mimeType``) by the decoded bytes."""
    if isinstance(value, dict):
        out = {k: decode_blobs(v) for k, v in value.items()}
        if isinstance(out.get("data"), str) and "mimeType" in out:
            out["data"] = b64decode(out["data"])
        return out
    if isinstance(value, list):
        return [decode_blobs(v) for v in value]
    return value


def encode_frame(message: dict[str, Any]) -> bytes:
    """Server → client: JSON in a binary frame, bytes as standard base64."""

    def default(o: Any) -> Any:
        if isinstance(o, bytes | bytearray):
            return base64.b64encode(o).decode("ascii")
        raise TypeError(f"cannot encode {type(o).__name__} in a server message")

    return json.dumps(message, default=default, ensure_ascii=False).encode("utf-8")


def clip_reason(reason: str) -> str:
    """Cut a close reason to 123 UTF-8 bytes without splitting a character."""
    raw = reason.encode("utf-8")[:MAX_REASON_BYTES]
    return raw.decode("utf-8", errors="ignore")


def duration(seconds: float) -> str:
    """A protobuf Duration string ("5s", "0.25s"), as goAway.timeLeft carries it."""
    return f"{seconds:g}s"


def api_version(path: str) -> str | None:
    """The API version segment of a Live URL path, or None if the path is not a Live URL."""
    m = PATH_RE.match(path.split("?", 1)[0])
    if m is None:
        return None
    return m.group("gv") or m.group("vv")


def model_id(model: str) -> str:
    """``models/X``, ``publishers/google/models/X`` or ``projects/../models/X`` → ``X``."""
    return model.rsplit("models/", 1)[-1] if "models/" in model else model


# --- TLS ----------------------------------------------------------------------------------

CA_NAME = "edged-sim-ca.pem"
CERT_NAME = "edged-sim-cert.pem"
KEY_NAME = "edged-sim-key.pem"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ensure_certs(cert_dir: Path) -> tuple[Path, Path, Path]:
    """Create (or reuse, if still valid) a CA and a server cert for 127.0.0.1/localhost.

    A CA plus a leaf rather than one self-signed leaf: strict X.509 verification (default in
    newer Pythons) refuses a CA certificate presented as a server certificate. Returns
    (ca_file, cert_file, key_file); the client trusts ``ca_file``.
    """
    cert_dir.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = cert_dir / CA_NAME, cert_dir / CERT_NAME, cert_dir / KEY_NAME
    now = dt.datetime.now(dt.UTC)
    if ca_file.exists() and cert_file.exists() and key_file.exists():
        leaf = x509.load_pem_x509_certificate(cert_file.read_bytes())
        if leaf.not_valid_after_utc > now + dt.timedelta(days=1):
            return ca_file, cert_file, key_file
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("edged-sim test CA")).issuer_name(_name("edged-sim test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
            x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key_file.chmod(0o600)
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_file, cert_file, key_file


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx
