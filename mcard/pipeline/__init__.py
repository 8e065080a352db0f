"""Whole workflows over a registry: ``sync`` and ``plan`` (:mod:`.sync`, :mod:`.plan`), ``package``
(:mod:`.package` with :mod:`.package_plan`, :mod:`.package_configs`, :mod:`.package_shard`), ``publish``
(:mod:`.publish`, :mod:`.sync_publish`) and the local ``demo`` (:mod:`.demo`, :mod:`.demo_publish`)."""
