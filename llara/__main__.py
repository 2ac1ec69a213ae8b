"""``python -m llara <command> ...`` is the ``llara`` command."""

import sys

from llara.cli import main

sys.exit(main())
