"""``mcard smoke``: quantized layers through the int4 kernels (:mod:`.run`), the layers each format gives
(:mod:`.layers`) and the float32 torch references (:mod:`.reference`, :mod:`.reference_gguf`)."""
