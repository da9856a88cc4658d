"""``python -m kvtui``: the same as the ``kvtui`` command."""

from __future__ import annotations

import sys

from kvtui.cli import main

if __name__ == "__main__":
    sys.exit(main())
