"""The instrument table: SYMBOL@VENUE <-> instrument id, tick and lot size. Cold path.

Built once from config by the controller (or a backtest) and handed to every process; the
numpy form (``INSTRUMENT_DTYPE``) is what numba kernels see. Instrument ids start at 1 (0 means
"none" / "all" in records).
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from shm.records import INSTRUMENT_DTYPE


def decimal_to_mant_exp(d: Decimal) -> tuple[int, int]:
    """0.0025 -> (25, 4): d == mant * 10**-exp with integer mant > 0, exp >= 0."""
    sign, digits, exponent = d.normalize().as_tuple()
    if sign or not digits:
        raise ValueError(f"size must be positive, got {d}")
    mant = int("".join(map(str, digits)))
    if exponent >= 0:
        return mant * 10**exponent, 0
    return mant, -exponent


@dataclass(frozen=True)
class Instrument:
    instrument_id: int
    symbol: str
    venue: str
    venue_id: int
    tick_size: Decimal
    lot_size: Decimal
    group: str = ""

    @property
    def key(self) -> str:
        return f"{self.symbol}@{self.venue}"

    def price_to_ticks(self, text: str | Decimal) -> int:
        """Exact: raises ValueError if the price is not a whole number of ticks."""
        q, r = divmod(Decimal(text), self.tick_size)
        if r != 0:
            raise ValueError(f"{self.key}: price {text} is not a multiple of tick {self.tick_size}")
        return int(q)

    def qty_to_lots(self, text: str | Decimal) -> int:
        q, r = divmod(Decimal(text), self.lot_size)
        if r != 0:
            raise ValueError(f"{self.key}: quantity {text} is not a multiple of lot {self.lot_size}")
        return int(q)

    def ticks_to_price(self, ticks: int) -> Decimal:
        return self.tick_size * ticks

    def lots_to_qty(self, lots: int) -> Decimal:
        return self.lot_size * lots


class InstrumentTable:
    """Instruments in id order; look up by id or by SYMBOL@VENUE."""

    def __init__(self, instruments: list[Instrument]):
        self._by_id = {i.instrument_id: i for i in instruments}
        self._by_key = {i.key: i for i in instruments}
        self.instruments = list(instruments)

    @classmethod
    def from_config(cls, cfg) -> "InstrumentTable":
        venue_ids = {v.name: n + 1 for n, v in enumerate(cfg.venues)}
        out = []
        for n, ic in enumerate(cfg.instruments):
            out.append(Instrument(n + 1, ic.symbol, ic.venue, venue_ids[ic.venue], ic.tick_size,
                                  ic.lot_size, ic.group))
        return cls(out)

    def __len__(self) -> int:
        return len(self.instruments)

    def __iter__(self):
        return iter(self.instruments)

    def by_id(self, instrument_id: int) -> Instrument:
        return self._by_id[instrument_id]

    def by_key(self, key: str) -> Instrument:
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"unknown instrument {key!r} (known: {', '.join(self._by_key)})") from None

    def to_array(self) -> np.ndarray:
        arr = np.zeros(len(self.instruments), dtype=INSTRUMENT_DTYPE)
        groups: dict[str, int] = {}
        for row, inst in zip(arr, self.instruments):
            row["instrument_id"] = inst.instrument_id
            row["venue_id"] = inst.venue_id
            row["symbol"] = inst.symbol.encode()[:24]
            row["venue"] = inst.venue.encode()[:16]
            row["tick_mant"], row["tick_exp"] = decimal_to_mant_exp(inst.tick_size)
            row["lot_mant"], row["lot_exp"] = decimal_to_mant_exp(inst.lot_size)
            key = inst.group or inst.symbol
            row["group_id"] = groups.setdefault(key, len(groups) + 1)
        return arr
