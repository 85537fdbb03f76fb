"""Test and demo rigs for edged: everything that stands in for the outside world.

Nothing here runs on the device, and nothing in ``edged`` imports it (``tests/test_imports.py``
checks both). It needs the ``testing`` extra (``cryptography`` for the simulator's CA):

* :mod:`edged_testing.sim` - the Gemini Live simulator (``edged-sim``), a TLS WebSocket server
  speaking the real wire protocol to the real google-genai SDK;
* :mod:`edged_testing.alsa` - virtual ALSA devices through alsa-lib's ``file`` plugin;
* :mod:`edged_testing.speech` and :mod:`edged_testing.material` - espeak-ng speech and the
  noise/echo mixes built from it;
* :mod:`edged_testing.voice_rig` - the whole voice path on one machine (devices + simulator +
  the real runtime classes), shared by tests, ``make demo`` and ``make bench``.
"""
