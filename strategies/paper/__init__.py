"""Published results reproduced with hftfarm's own strategy kernels in model worlds.

A package, not a strategy module: the strategy registry lists only the plain modules of
``strategies/``, so nothing here is a strategy kind. Cold drivers with compiled path loops;
``avellaneda_stoikov`` runs strategies/market_making.py in market/asworld.py.
"""
