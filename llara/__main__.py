"""``python -m llara <command> ...`` is the ``llara`` command."""

from llara.cli import console_main

console_main()
