"""``python -m edged`` is the ``edged`` command (systemd's ExecStart uses ``edged run``)."""

import sys

from edged.cli import main

sys.exit(main())
