"""Row-wise HE products (protocols/he_rowdot.py): exact against the ideal, at the declared cost."""

from __future__ import annotations

import numpy as np
import pytest

from secmoe.crypto.he_params import FLOOD_UNION_BITS, HE_8K
from secmoe.crypto.prg import PRG
from secmoe.crypto.ring import DEFAULT_RING
from secmoe.net import PartyError, run_local
from secmoe.protocols.he_linear import matmul_cost, plan_matmul
from secmoe.protocols.he_rowdot import ideal_rows, plan_rows, row_product, rows_cost
from secmoe.protocols.he_setup import setup_client, setup_server

SEEDS = {"client": b"\x11" * 16, "server": b"\x22" * 16}
K = FLOOD_UNION_BITS
CASES = [("dot", 3, 5), ("dot", 9, 40), ("scale_c", 3, 7), ("scale_s", 5, 6), ("scale_s", 17, 4)]


def _operands(kind, rows, d, w_bits):
    data = PRG(b"rowdot-data-0000")
    a = data.ring((rows,) if kind == "scale_s" else (rows, d))
    a.flat[:2] = [0, 2**64 - 1]
    v = data.below(1 << (w_bits - 1), (rows,) if kind == "scale_c" else (rows, d))
    v.flat[0] = (1 << (w_bits - 1)) - 1
    return a, v


def _run(kind, a, v, d, w_bits, out_bits=64):
    kw = {"union_bits": K, "out_bits": out_bits}

    async def client(ch):
        prg = PRG(SEEDS["client"])
        he = await setup_client(ch, prg, HE_8K)
        snap = ch.stats.snapshot()
        out = await row_product(ch.fork("r"), he, kind, a, d, w_bits, prg, **kw)
        return out, ch.stats.since(snap)

    async def server(ch):
        he = await setup_server(ch, HE_8K)
        return await row_product(ch.fork("r"), he, kind, v, d, w_bits, PRG(SEEDS["server"]), **kw)

    return run_local(client, server, timeout=300)


@pytest.mark.parametrize(("kind", "rows", "d"), CASES)
async def test_row_products_are_exact_at_the_declared_cost(kind, rows, d):
    w_bits = 31
    a, v = _operands(kind, rows, d, w_bits)
    (got_c, delta), got_s = await _run(kind, a, v, d, w_bits)
    got = DEFAULT_RING.reduce(got_c + got_s)
    np.testing.assert_array_equal(got, ideal_rows(kind, a, v))
    rows_cost(kind, rows, d, w_bits, K).check(delta, exact_rounds=True)
    assert np.any(got_c != got)  # the client's share is masked, not the result


@pytest.mark.parametrize("kind", ["dot", "scale_c"])
async def test_results_wanted_mod_2_to_the_b_are_exact_with_fewer_bytes(kind):
    """out_bits = 44 (the norm's c·y ring): the shares come back mod 2^44, exactly, and each
    returned coefficient carries about 20 bits fewer."""
    rows, d, w_bits, b = 8, 96, 31, 44
    a, v = _operands(kind, rows, d, w_bits)
    (got_c, delta), got_s = await _run(kind, a, v, d, w_bits, out_bits=b)
    mask = np.uint64((1 << b) - 1)
    assert got_c.max() <= mask and got_s.max() <= mask  # shares mod 2^b
    np.testing.assert_array_equal((got_c + got_s) & mask, ideal_rows(kind, a, v) & mask)
    cost = rows_cost(kind, rows, d, w_bits, K, b)
    cost.check(delta, exact_rounds=True)
    full = rows_cost(kind, rows, d, w_bits, K)
    assert cost.bytes_c2s == full.bytes_c2s  # the same input ciphertexts
    assert cost.bytes_s2c < 0.8 * full.bytes_s2c
    with pytest.raises(ValueError, match="out_bits"):
        plan_matmul(8, 8, [8], HE_8K, out_bits=65)


def test_plan_weighs_bytes_against_products():
    """128 rows of 768: one product of all rows would send fewer bytes but multiply 12 times
    as many blocks; groups of 8 win once each product is charged PRODUCT_WEIGHT."""
    assert plan_rows("dot", 128, 768, 31) == 8
    one = plan_matmul(128, 768, [128], HE_8K, w_bits=31, union_bits=K)
    eight = plan_matmul(8, 768, [8], HE_8K, w_bits=31, union_bits=K)
    assert matmul_cost(one)["bytes_c2s"] < 16 * matmul_cost(eight)["bytes_c2s"]
    assert one.products >= 12 * 16 * eight.products
    grouped = rows_cost("dot", 128, 768, 31, K)
    assert grouped.bytes_total == 16 * rows_cost("dot", 8, 768, 31, K).bytes_total
    assert (grouped.messages, grouped.rounds) == (32, 2)  # 16 groups, concurrently
    with pytest.raises(ValueError, match="unknown row product"):
        plan_rows("outer", 2, 2, 31)


async def test_server_operand_out_of_range_is_refused():
    a, v = _operands("dot", 2, 3, 8)
    v[0, 0] = 1 << 7
    with pytest.raises(PartyError, match="exceed 2\\^7"):
        await _run("dot", a, v, 3, 8)
