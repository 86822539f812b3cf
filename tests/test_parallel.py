"""ordered_map keeps input order and pulls at most `ahead` items early."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from wsss_fast.parallel import ordered_map


def test_order_and_bounded_lookahead():
    pulled = []

    def items():
        for i in range(20):
            pulled.append(i)
            yield i

    with ThreadPoolExecutor(4) as pool:
        out = ordered_map(pool, lambda x: x * x, items(), ahead=3)
        first = next(out)
        assert first == 0 and len(pulled) == 3
        assert [first, *out] == [i * i for i in range(20)]
    with pytest.raises(ValueError):
        next(ordered_map(pool, abs, [1], ahead=0))
