"""The Mamba-2 backbone (worldrl.backbones.mamba2): kernels.ssd_chunk_scan over sequences,
kernels.ssd_state_update for single steps, resettable conv and scan state. The contract checks
(tests/test_backbone_contract.py) run on it at the default chunk; here sequences span chunks."""

import pytest
import torch

from tests import ssm_checks as checks
from worldrl.backbones import BACKBONES, Mamba2

torch.set_num_threads(1)


def test_registry_shapes_and_drama_sizes():
    assert BACKBONES["mamba2"] is Mamba2
    m = checks.make("mamba2")
    mixer = m.mixers[0]
    assert m.d_model == 16 and mixer.d_inner == 32 and mixer.headdim == 2 and mixer.nheads == 16
    assert mixer.conv_dim == 32 + 2 * 16 and len(m.mixers) == 2
    assert m.state_spec() == {"deter": (16,), "stoch": (20,), "mamba2_0_conv": (64, 3),
                              "mamba2_0_ssm": (16, 2, 16), "mamba2_1_conv": (64, 3),
                              "mamba2_1_ssm": (16, 2, 16)}
    # size S: Drama's Mamba-2 (d_model 512, 2 layers, d_state 16; mamba_ssm's headdim 64)
    s = Mamba2(8, 3, deter=2048, hidden=16, stoch=2, classes=2)
    mx = s.mixers[0]
    assert (s.d_model, mx.d_state, mx.headdim, mx.nheads, mx.ngroups) == (512, 16, 64, 16, 1)
    # mamba_ssm's Mamba2 parameter count at d_model 512 (in_proj, conv, dt_bias, A_log, D,
    # the gated norm, out_proj)
    di, n, h = 1024, 16, 16
    expect = (512 * (2 * di + 2 * n + h) + (di + 2 * n) * 5 + 3 * h + di + di * 512)
    assert sum(p.numel() for p in mx.parameters()) == expect
    with pytest.raises(ValueError, match="not a multiple of headdim"):
        checks.make("mamba2", headdim=5)
    with pytest.raises(ValueError, match="not a multiple of ngroups"):
        checks.make("mamba2", ngroups=3)


@pytest.mark.parametrize("chunk_size", [2, 3, 64])
def test_parallel_equals_recurrent_across_chunks(chunk_size):
    """observe over T = 9 steps in chunks of 2 or 3 (resets inside chunks and at their edges)
    equals the step-by-step recurrence, as the contract's one-chunk check does."""
    m = checks.make("mamba2", chunk_size=chunk_size)
    embed, action, is_first = checks.inputs(resets=((1, 4), (2, 3), (0, 6)))
    with torch.no_grad():
        post, prior, _ = m.observe(embed, action, is_first, sample=False)
        deter, _ = checks.recurrent(m, post, action, is_first)
    torch.testing.assert_close(post["deter"], deter, **checks.TOL)


def test_exact_imagination_starts_across_chunks():
    """imag_context = 0 (R2I): the tail states through the linear scan after a chunked prefix
    equal the posterior states."""
    m = checks.make("mamba2", chunk_size=3, imag_context=0)
    embed, action, is_first = checks.inputs(T=10, resets=((1, 7),))
    with torch.no_grad():
        post, _, _ = m.observe(embed, action, is_first, sample=False)
        start = m.imagination_starts(post, action, is_first, 4)
    torch.testing.assert_close(start["deter"], post["deter"][:, 6:].reshape(12, -1), **checks.TOL)


def test_cli_trains_on_dmc(tmp_path):
    checks.cli_smoke(tmp_path, "mamba2", "dmc")


@pytest.mark.parametrize("check", [checks.check_parallel_equals_recurrent,
                                   checks.check_reset_equals_two_sequences,
                                   checks.check_step_paths_agree,
                                   checks.check_gradients_reach_every_parameter],
                         ids=lambda c: c.__name__[len("check_"):])
def test_contract_without_bc_norm(check):
    """mamba_ssm's Mamba-2 mixer (bc_norm off) keeps the contract too."""
    check("mamba2", bc_norm=False)


def test_bc_norm():
    """bc_norm: B and C of unit RMS over d_state per group; off: the conv's output as is."""
    on = checks.make("mamba2", ngroups=2).mixers[0]
    off = checks.make("mamba2", ngroups=2, bc_norm=False).mixers[0]
    assert on.bc_norm and not off.bc_norm
    xbc = torch.randn(5, on.conv_dim)
    x, b, c = on._split_xbc(xbc)
    for t in (b, c):
        assert t.shape == (5, 2, on.d_state)
        torch.testing.assert_close(t.square().mean(-1), torch.ones(5, 2), atol=1e-4, rtol=0)
    x0, b0, c0 = off._split_xbc(xbc)
    n = 2 * off.d_state
    torch.testing.assert_close(x0, x)
    torch.testing.assert_close(b0.flatten(-2), xbc[:, off.d_inner:off.d_inner + n])
    torch.testing.assert_close(c0.flatten(-2), xbc[:, off.d_inner + n:])
