"""``edged ota pull``: fetch the fleet's bundle from any static HTTPS host, hand it to the daemon.

Run by ``edged-ota-pull.timer`` (systemd spreads a fleet's requests with
``RandomizedDelaySec=``, so no device needs a server of ours and none stampede the host).

* ``If-None-Match`` / ``If-Modified-Since`` from the last answer (``pull.json`` next to the OTA
  state): an unchanged bundle costs a ``304`` and nothing else.
* HTTPS only, redirects included; the body is read up to the bundle size cap and no further.
* A bundle whose signature checks and whose version is not above the device's highest is "up to
  date" and is not sent; anything else goes to the running daemon as ``ota.apply``, which owns
  every decision and the health window. The validators are stored only once the daemon has
  answered for good (accepted or rejected), so a bundle fetched while edged is down or busy
  with a trial is fetched again next time.
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from edged import __version__
from edged.config import DEFAULT_OVERRIDE_CONFIG, Settings
from edged.logs import EV_OTA
from edged.ota.bundle import MAX_BUNDLE_BYTES, BundleError

log = logging.getLogger("edged.ota.pull")

CACHE_FILE = "pull.json"


def shown_url(url: str) -> str:
    """``url`` for logs and status: a signed host URL's query (a token) and any user:password
    are cut, since both are credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    shown = urlunsplit((parts.scheme, host, parts.path, "", ""))
    return shown + ("?…" if parts.query else "")


class PullError(Exception):
    """The bundle could not be fetched; the message says why."""


class _HttpsOnly(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> Any:
        if not newurl.startswith("https://"):
            raise PullError(f"{shown_url(req.full_url)} redirects to {shown_url(newurl)}, "
                            "which is not https")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    import certifi
    ctx = ssl.create_default_context(cafile=certifi.where())
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


def fetch(url: str, cache: dict[str, Any], ctx: ssl.SSLContext,
          timeout: float) -> tuple[bytes | None, dict[str, str]]:
    """(body, validators); body ``None`` means 304 Not Modified."""
    req = urllib.request.Request(url, headers={"User-Agent": f"edged/{__version__}"})
    if cache.get("url") == url:
        if cache.get("etag"):
            req.add_header("If-None-Match", cache["etag"])
        if cache.get("last_modified"):
            req.add_header("If-Modified-Since", cache["last_modified"])
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), _HttpsOnly)
    try:
        with opener.open(req, timeout=timeout) as resp:
            body = resp.read(MAX_BUNDLE_BYTES + 1)
            validators = {k: v for k, v in (("etag", resp.headers.get("ETag")),
                                            ("last_modified", resp.headers.get("Last-Modified")))
                          if v}
    except urllib.error.HTTPError as e:
        if e.code == 304:
            return None, {}
        raise PullError(f"{shown_url(url)}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise PullError(f"{shown_url(url)}: {reason}") from None
    return body, validators


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_cache(path: Path, url: str, validators: dict[str, str]) -> None:
    from edged.ota.state import atomic_write
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    atomic_write(path, json.dumps({"url": url, **validators}, indent=2).encode(), "pull-cache")


def _up_to_date(raw: bytes, settings: Settings, highest: int) -> int | None:
    """The bundle's version if it is signed by a trusted key and not newer than ``highest``."""
    from edged.ota.bundle import verify
    from edged.ota.keys import TrustedKeys
    try:
        bundle = verify(raw, TrustedKeys.load(settings.ota.trusted_keys_dir))
    except BundleError:
        return None            # the daemon judges it (and shows why it refused)
    return bundle.meta.version if bundle.meta.version <= highest else None


def pull(settings: Settings, override: Path | None) -> int:
    """One pull. Exit status: 0 nothing to do / handed over, 1 refused or failed."""
    from edged.control.client import ControlClient, NotRunning, RemoteError

    url = settings.ota.pull_url
    if not url:
        log.info("ota.pull_url is not set: nothing to pull")
        return 0
    cache_path = (override or DEFAULT_OVERRIDE_CONFIG).parent / CACHE_FILE
    cache = _load_cache(cache_path)
    try:
        raw, validators = fetch(url, cache, ssl_context(settings.ota.pull_ca_file),
                                settings.ota.pull_timeout_s)
    except PullError as e:
        log.error("OTA pull failed: %s", e, extra={"EDGED_EVENT": EV_OTA})
        return 1
    if raw is None:
        log.info("OTA pull: %s not modified", shown_url(url), extra={"EDGED_EVENT": EV_OTA})
        return 0
    client = ControlClient(settings.control.socket_path)
    try:
        status = client.ota_status()
        if status.get("pending"):
            log.info("OTA pull: version %s is on trial; fetching again next time",
                     status["pending"]["version"], extra={"EDGED_EVENT": EV_OTA})
            return 0
        have = _up_to_date(raw, settings, int(status.get("highest_version") or 0))
        if have is not None:
            log.info("OTA pull: up to date (bundle version %d)", have,
                     extra={"EDGED_EVENT": EV_OTA})
            _save_cache(cache_path, url, validators)
            return 0
        final: dict[str, Any] = {}
        for item in client.ota_apply(raw, wait=False, origin=f"pull {shown_url(url)}"):
            final = item
        log.info("OTA pull: version %s handed to edged (%s)", final.get("version"),
                 final.get("result"), extra={"EDGED_EVENT": EV_OTA})
    except NotRunning as e:
        log.error("OTA pull: edged is not running (%s); the bundle is fetched again next "
                  "time", e, extra={"EDGED_EVENT": EV_OTA})
        return 1
    except RemoteError as e:
        log.error("OTA pull: %s", e, extra={"EDGED_EVENT": EV_OTA})
        if e.code == "busy":
            return 0
        _save_cache(cache_path, url, validators)      # the same bytes would be refused again
        return 1
    _save_cache(cache_path, url, validators)
    return 0
