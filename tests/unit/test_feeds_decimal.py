"""Exact decimal text -> integer ticks/lots (feeds.decimal)."""
from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from feeds.decimal import BAD, Scale, checksum_fragment, frac_digits, step_for_digits


def test_binance_padded_prices_become_exact_ticks():
    s = Scale("0.00001")
    assert s.units("0.35130000") == 35130
    assert s.units("61837.63000000") == 6183763000
    assert s.units("0.00000000") == 0
    assert s.units("12") == 1200000


def test_a_value_that_is_not_a_whole_number_of_steps_is_rejected():
    assert Scale("0.01").units("1.005") == BAD
    assert Scale("0.25").units("1.50") == 6
    assert Scale("0.25").units("1.60") == BAD
    assert Scale("5").units("15") == 3 and Scale("5").units("16") == BAD


def test_text_that_is_not_a_plain_decimal_is_rejected_never_guessed():
    s = Scale("0.001")
    for bad in ["", ".", "-1.0", "+1.0", "1e-3", "1E3", " 1.0", "1.0 ", "1_000", "0x10",
                "１.0", "²", "1.2.3", "nan", "inf", "1." + "0" * 19, "9" * 40]:
        assert s.units(bad) == BAD, bad


def test_values_beyond_int64_are_rejected():
    assert Scale("0.00000001").units("99999999999999.99999999") == BAD
    assert Scale("0.00000001").units("9999999999.99999999") == 999999999999999999


@settings(max_examples=300, deadline=None)
@given(mant=st.integers(min_value=0, max_value=10**15), k=st.integers(0, 12),
       step_digits=st.integers(0, 12), pad=st.integers(0, 4))
def test_units_equal_the_exact_decimal_quotient(mant, k, step_digits, pad):
    value = Decimal(mant).scaleb(-k)
    text = f"{value:f}"
    if pad and "." in text:
        text += "0" * pad
    scale = Scale(step_for_digits(step_digits))
    q, r = divmod(value, scale.step)
    expected = int(q) if r == 0 and q < 2**63 else BAD
    assert scale.units(text) == expected


def test_kraken_checksum_text_keeps_full_precision():
    assert checksum_fragment("45285.2") == "452852"
    assert checksum_fragment("0.00100000") == "100000"
    assert checksum_fragment("0.0290") == "290"       # not "29": trailing zeros are kept
    assert frac_digits("0.35130000") == 4 and frac_digits("12") == 0
    assert f"{step_for_digits(8):f}" == "0.00000001" and step_for_digits(0) == 1
