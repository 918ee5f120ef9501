"""The checks. Collected only when ``--ferrum-backend`` names a backend.

A check's id is ``<group>.<function without test_>[params]``, e.g.
``numerics.decode_logits[llama_gqa]``; the group is the module name without
``test_`` unless the module sets ``GROUP``. Ids are stable: keep the names.
"""
