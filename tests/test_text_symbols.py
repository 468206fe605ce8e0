"""The phone tables equal upstream's, entry for entry (ids are baked into every checkpoint)."""
from specdec.models.text.symbols import SYMBOL_TO_ID, SYMBOLS_V1, SYMBOLS_V2
from upstream import require_upstream


def test_tables_equal_upstream():
    require_upstream()
    from text import symbols, symbols2
    assert SYMBOLS_V1 == symbols.symbols
    assert SYMBOLS_V2 == symbols2.symbols
    assert (len(SYMBOLS_V1), len(SYMBOLS_V2)) == (322, 732)


def test_v2_extends_v1():
    assert SYMBOLS_V2[:322] == SYMBOLS_V1
    assert all(SYMBOL_TO_ID["v2"][s] == i for i, s in enumerate(SYMBOLS_V1))
    assert len(set(SYMBOLS_V2)) == len(SYMBOLS_V2)
