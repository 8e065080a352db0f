"""The core every command stands on: a variant on disk (:mod:`.variant`, :mod:`.safetensors_io`), a model's
architecture (:mod:`.arch`), the report and its findings (:mod:`.report`), sizes (:mod:`.size`, :mod:`.units`),
``validate`` (:mod:`.validate`), errors and exit codes (:mod:`.errors`), and the rules for reading and writing
untrusted files and text (:mod:`.untrusted`, :mod:`.safetext`, :mod:`.pathguard`, :mod:`.jsonio`).

Nothing here knows a format by name: what a format is lives in :mod:`mcard.formats`.
"""
