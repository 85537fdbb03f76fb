"""Signed over-the-air config bundles with automatic rollback (docs/ota.md).

One module per job:

* :mod:`~edged.ota.bundle` - the file format: envelope, signature check before any parsing,
  metadata; signing (publisher side).
* :mod:`~edged.ota.keys` - Ed25519 key pairs, key ids, the trusted-keys directory.
* :mod:`~edged.ota.admit` - may this verified bundle be applied here? (replay, expiry, target,
  minimum version, keys that must never change over the air, the typed config model). Pure.
* :mod:`~edged.ota.state` - the device's persistent OTA state under the override file's
  directory, written so that a kill or power cut leaves the old or the new config.
* :mod:`~edged.ota.health` - the health window's verdict from the daemon's events. Pure.
* :mod:`~edged.ota.apply` - the daemon component: apply, health window, commit or roll back.
* :mod:`~edged.ota.pull` - fetch a bundle over HTTPS (ETag) and hand it to the daemon.
* :mod:`~edged.ota.cli` - ``edged ota keygen|sign|inspect|pull``.

The daemon imports these lazily; only verifying a bundle loads PyNaCl.
"""
