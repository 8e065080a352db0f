"""``mcard.arch`` is :mod:`mcard.core.arch` under its former name, kept because the README's Python examples
import it from here (``from mcard.arch import tiny_config``). New code imports :mod:`mcard.core.arch`."""

import sys

from .core import arch as _arch

sys.modules[__name__] = _arch
