"""The registry: one TOML entry per published repo (:mod:`.entry` loads it, :mod:`.schema` types its keys)."""
