"""``python -m mcard.cli``: the same as the ``mcard`` console script."""

from . import main

main()
