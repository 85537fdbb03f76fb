"""May this verified bundle be applied on this device? Pure checks, in a fixed order.

Nothing here writes anything: a bundle refused at any step leaves the device as it was. The
order follows what is cheapest and most telling first - replay, expiry, target, minimum
version - then the keys that must never change over the air, then the same typed config model
the daemon loads (so an error names the key exactly as ``edged check-config`` would).

Keys a bundle may never set (by name, before the schema is consulted):

* ``ota.*`` - the trust anchors, the device's identity, the pull URL and the health window
  judge bundles; a bundle that could change them could disable its own check or cut the device
  off from the next fix (a wrong pull URL cannot be detected by a health window).
* ``control.*`` - the socket, its group and limits are how an owner reaches a device that went
  wrong; a mistake there locks out ``edgectl`` and no health check notices.
* ``paths.*`` and every other filesystem path in the schema (found by type, so a new path
  setting is covered without editing this list): a bundle must not point the daemon at files
  it would read (a CA, a key file) or overwrite (a metrics textfile over the OTA state).
* ``gemini.api_key`` / ``api_key_file`` - secrets never travel in bundles: a pulled bundle
  sits on a web host. The key stays in the systemd credential.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edged.config import ConfigError, Settings, load_settings
from edged.ota.bundle import Bundle, BundleError, fmt_time, version_tuple

FORBIDDEN_SECTIONS = {
    "ota": "OTA trust settings (keys, identity, pull URL, health window) judge the bundles",
    "control": "the control socket is how an owner reaches a device that went wrong",
    "paths": "the state directory holds the OTA state itself",
}
FORBIDDEN_KEYS = {
    "gemini.api_key": "secrets never travel in bundles; keep the key in the systemd credential",
    "gemini.api_key_file": "secrets never travel in bundles; keep the key in the systemd "
                           "credential",
}
PATH_REASON = "a filesystem path: a bundle must not point the daemon at files"


@dataclass(frozen=True, slots=True)
class Device:
    """What the checks need to know about this device."""

    device_id: str
    groups: tuple[str, ...]
    edged_version: str
    highest_version: int          # the highest bundle version ever accepted here (0: none)


def _is_path(annotation: Any) -> bool:
    if annotation is Path:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_path(a) for a in typing.get_args(annotation))
    return False


def path_keys(model: type[BaseModel] = Settings, prefix: str = "") -> set[str]:
    """Dotted names of every Path-typed setting in the schema."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= path_keys(ann, f"{prefix}{name}.")
        elif _is_path(ann):
            out.add(f"{prefix}{name}")
    return out


def forbidden(config: Mapping[str, Any]) -> list[str]:
    """``key: why`` for every key in the fragment a bundle may not set."""
    paths = path_keys()
    out: list[str] = []
    for section, value in config.items():
        if section in FORBIDDEN_SECTIONS:
            names = ([f"{section}.{k}" for k in value] if isinstance(value, Mapping) and value
                     else [section])
            out.extend(f"{n}: {FORBIDDEN_SECTIONS[section]}" for n in names)
            continue
        if not isinstance(value, Mapping):
            continue
        for key in value:
            dotted = f"{section}.{key}"
            if dotted in FORBIDDEN_KEYS:
                out.append(f"{dotted}: {FORBIDDEN_KEYS[dotted]}")
            elif dotted in paths:
                out.append(f"{dotted}: {PATH_REASON}")
    return out


def check_applicable(bundle: Bundle, device: Device, now: datetime) -> None:
    """Replay, expiry, target and minimum version; raises BundleError."""
    m = bundle.meta
    if m.version <= device.highest_version:
        raise BundleError("replay", f"version {m.version} is not newer than version "
                          f"{device.highest_version}, the highest this device has accepted "
                          "(a replayed or out-of-date bundle); publish the change with a "
                          "higher version")
    if now >= m.expires:
        raise BundleError("expired", f"the bundle expired at {fmt_time(m.expires)} (now "
                          f"{fmt_time(now)}); sign it again with a later --expires")
    if m.targets:
        mine = {f"device:{device.device_id}", *(f"group:{g}" for g in device.groups)}
        if not mine & set(m.targets):
            raise BundleError("not_targeted", f"the bundle targets {' '.join(m.targets)}; "
                              f"this device is {' '.join(sorted(mine))} (ota.device_id, "
                              "ota.groups)")
    if m.min_edged_version and (version_tuple(device.edged_version)
                                < version_tuple(m.min_edged_version)):
        raise BundleError("edged_too_old", f"the bundle needs edged >= {m.min_edged_version}; "
                          f"this device runs {device.edged_version} (update it first)")


def validate(config: Mapping[str, Any], version: int, admin: Path | None) -> Settings:
    """The settings the device would run: admin file + this fragment as the override layer
    (it replaces the current one), validated by the same model. Raises BundleError."""
    bad = forbidden(config)
    if bad:
        raise BundleError("forbidden_key", "the bundle sets keys that never change over the "
                          "air (set them in /etc/edged/edged.toml instead):\n  "
                          + "\n  ".join(bad))
    try:
        return load_settings(admin, Path(os.devnull), extra=config,
                             extra_origin=f"bundle version {version}")
    except ConfigError as e:
        raise BundleError("invalid_config", str(e)) from None


def admit(bundle: Bundle, device: Device, now: datetime, admin: Path | None) -> Settings:
    """Every check a verified bundle must pass before anything is written."""
    check_applicable(bundle, device, now)
    return validate(bundle.config, bundle.meta.version, admin)
