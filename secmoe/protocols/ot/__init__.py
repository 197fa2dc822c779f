"""Oblivious transfer: base OT, IKNP extension, derived OTs, 1-out-of-N OT, the session pool.

Protocols use :class:`secmoe.protocols.ot.pool.OTPool` (its docstring lists the API). Modules:

- :mod:`.base`: Chou–Orlandi base OT over ristretto255; :class:`~.base.Cost`; the COT-source
  interface (:class:`~.base.CotSender`, :class:`~.base.CotReceiver`).
- :mod:`.iknp`: IKNP correlated OT with a global Δ (a COT source), and the random,
  chosen-message and additive OTs derived from any COT source by hashing.
- :mod:`.kkot`: 1-out-of-N OT (N ≤ 256) from ⌈log2 N⌉ COTs per transfer.
- :mod:`.ferret` (with :mod:`.ggm`, :mod:`.lpn`): Ferret silent OT, a COT source at ~0.06 B
  per COT; :mod:`.silent`: its pool source (one stream per direction shared by all forks).
- :mod:`.pool`: the per-session pool (setup, forks, every OT kind, declared costs, benches).
"""
