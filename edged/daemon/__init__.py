"""``edged run``: the components composed and run like a real systemd daemon.

Lifecycle (``Type=notify``, systemd 252 - no ``notify-reload``):

* start: load config (invalid -> exit 78/EX_CONFIG, which the unit does not restart), open the
  knowledge index and register its tool, start the Live session, the voice loop (ALSA) and the
  camera, each in its **own supervised task** with its own recovery loop, then listen on the
  control socket. ``READY=1`` is sent when the config is valid, the devices have been tried
  (open, or marked degraded), the index has been tried and the socket listens.
* running: ``STATUS=`` follows every event that can change it (health, state, session, index
  generation, config version); ``WATCHDOG=1`` is sent by a task *on the main event loop* after
  a liveness check (housekeeping heartbeat fresh, no supervised task died), so a stalled loop
  is killed by systemd.
* SIGHUP / ``edgectl reload``: ``RELOADING=1`` -> re-read the config -> invalid: keep the old
  one, say why (log, ``STATUS=``, ``edgectl status``) -> valid: each component's
  ``apply_settings(new)`` applies what it can live and returns what needs a restart; a
  component that fails to apply is reported, the others still apply -> ``READY=1``, always.
* SIGTERM/SIGINT: ``STOPPING=1`` -> stop accepting control requests, close the Live session,
  stop the other components, write the metrics textfile - within ``control.stop_timeout_s``.

A component that fails marks the daemon *degraded* and is restarted with backoff; it never
takes the daemon down. Components that are not importable (e.g. no ALSA library) are reported
as unavailable.

Modules: :mod:`~edged.daemon.run` (the daemon object and ``main``),
:mod:`~edged.daemon.supervisor`, :mod:`~edged.daemon.status`, :mod:`~edged.daemon.methods`,
:mod:`~edged.daemon.observers`.
"""
