"""GeLU / SiLU by STC, ReLU, and PUMA's GeLU by CTC: against the spec, the float functions,
at every breakpoint, with their declared bytes."""

import numpy as np
import pytest

from secmoe.crypto.ring import Ring
from secmoe.ops import activations as act
from secmoe.ops import approx
from secmoe.ops import piecewise as pw
from tests.ops.test_piecewise import checked
from tests.protocols.helpers import SOURCES, mine, opened, run_parties, split

R = Ring(64, 18)
KINDS = ("gelu", "silu", "relu", "gelu_ctc")
#: The issue's bounds against the exact functions (the specs measure 1.19e-2, 4.8e-3, 0, 1.8e-2).
FLOAT_TOL = {"gelu": 1.3e-2, "silu": 1e-2, "relu": 0.0, "gelu_ctc": 2e-2}


def table(kind: str) -> approx.PiecewisePolynomial:
    return approx.GELU_PUMA if kind == "gelu_ctc" else act.TABLES[kind]


def inputs(kind: str) -> np.ndarray:
    """Every breakpoint and its ±1-ulp neighbours, the range's ends, and random values."""
    b = table(kind).encoded_breakpoints(R)
    rng = np.random.default_rng(len(kind))
    rand = R.to_signed(R.encode(rng.uniform(-12, 12, 300)))
    big = R.to_signed(R.encode(np.array([-8000.0, 8000.0, -40.0, 40.0, 0.0])))
    return R.from_signed(np.concatenate([b - 1, b, b + 1, big, rand]))


@pytest.mark.parametrize("source", SOURCES)
async def test_activations_match_their_specs_and_declared_bytes(source):
    data = {k: inputs(k) for k in KINDS}
    shares = {k: split(v, R, 9) for k, v in data.items()}

    async def body(p):
        out = {}
        for k in KINDS:
            snap, mark = p.ch.stats.snapshot(), p.ot.mark()
            out[k] = await act.activation(p.fork(k), mine(p, shares[k]), k)
            checked(p, snap, mark, act.activation_cost(p.ot, k, data[k].size, R))
        return out

    c_out, s_out = await run_parties(body, source=source)
    for k in KINDS:
        x = data[k]
        got = R.to_signed(opened((c_out[k], s_out[k]), R))
        err = np.abs(got - R.to_signed(act.ideal(k, x, R)))
        assert (err <= pw.error_bound(table(k), x, R)).all(), k
        assert err.max() <= 2, k  # degree ≤ 2 (STC) or the PUMA powers near |x| ≤ 3
        xf = R.decode(x)
        inside = np.abs(xf) <= 12
        ref_err = np.abs(got / 2**18 - act.reference(k, xf))[inside]
        assert ref_err.max() <= FLOAT_TOL[k], k
    assert R.to_signed(opened((c_out["relu"], s_out["relu"]), R)).tolist()[-305:-300] == [
        0,
        R.to_signed(R.encode(8000.0)),
        0,
        R.to_signed(R.encode(40.0)),
        0,
    ]


async def test_gelu_onehot_selection_agrees_and_costs_more():
    x = inputs("gelu")
    xs = split(x, R, 3)

    async def body(p):
        mux = await act.gelu(p.fork("mux"), mine(p, xs))
        onehot = await act.gelu(p.fork("onehot"), mine(p, xs), select="onehot")
        return (
            mux,
            onehot,
            (
                act.activation_cost(p.ot, "gelu", 393216, R).bytes_total,
                act.activation_cost(p.ot, "gelu", 393216, R, select="onehot").bytes_total,
                act.activation_cost(p.ot, "gelu_ctc", 393216, R).bytes_total,
            ),
        )

    (cm, co, sizes), (sm, so, _) = await run_parties(body)
    bound = pw.error_bound(approx.GELU, x, R)
    ideal = R.to_signed(act.ideal("gelu", x, R))
    for c, s in ((cm, sm), (co, so)):
        assert (np.abs(R.to_signed(opened((c, s), R)) - ideal) <= bound).all()
    stc, onehot, ctc = sizes
    assert stc < 0.5 * onehot  # selecting values by MUX beats selecting coefficients + products
    # At 128 × 3072 with IKNP: 2.39 KB vs 6.76 KB per element (0.35×; the comparisons are 63% of
    # STC); the CTC uses the same narrow products, so this is the protocol-for-protocol ratio.
    assert stc < 0.4 * ctc


async def test_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation"):
        await act.activation(None, np.zeros(1, np.uint64), "tanh")  # type: ignore[arg-type]
