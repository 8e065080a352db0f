"""``mcard.formats._gguf_split`` is :mod:`mcard.formats.gguf.split` under its former name, kept because the
README's Python examples import it from here. New code imports :mod:`mcard.formats.gguf.split`."""

import sys

from .gguf import split as _split

sys.modules[__name__] = _split
