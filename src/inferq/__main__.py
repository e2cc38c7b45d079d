"""``python -m inferq`` is the ``inferq`` command."""

from inferq.cli import main

main()
