"""The Mamba backbone (worldrl.backbones.mamba): kernels.selective_scan over sequences,
kernels.selective_state_update for single steps, resettable conv and scan state."""

import pytest
import torch
import torch.nn.functional as F

from tests import ssm_checks as checks
from worldrl.backbones import BACKBONES, Mamba

torch.set_num_threads(1)


def test_registry_shapes_and_drama_sizes():
    assert BACKBONES["mamba"] is Mamba
    m = checks.make("mamba")
    mixer = m.mixers[0]
    assert m.d_model == 16 and mixer.d_inner == 32 and mixer.d_state == 16
    assert mixer.dt_rank == 1 and len(m.mixers) == 2
    assert m.state_spec() == {"deter": (16,), "stoch": (20,), "mamba0_conv": (32, 3),
                              "mamba0_ssm": (32, 16), "mamba1_conv": (32, 3),
                              "mamba1_ssm": (32, 16)}
    # size S maps to Drama's defaults: d_model 512, 2 layers, d_state 16
    s = Mamba(8, 3, deter=2048, hidden=16, stoch=2, classes=2)
    assert s.d_model == 512 and len(s.mixers) == 2 and s.mixers[0].d_state == 16
    with pytest.raises(ValueError, match="d_conv"):
        checks.make("mamba", d_conv=1)


def test_reset_survives_slowly_decaying_state():
    """The scan's reset (dt' = 1e6) also drops states whose A has decayed toward 0."""
    m = checks.make("mamba")
    with torch.no_grad():
        for mixer in m.mixers:
            mixer.A_log.fill_(-9.0)  # |A| = 1.2e-4: a time constant of ~8000 steps
    embed, action, is_first = checks.inputs(B=2, T=8, resets=((0, 5), (1, 5)))
    with torch.no_grad():
        post, _, _ = m.observe(embed, action, is_first, sample=False)
        act_b = action[:, 5:].clone()
        act_b[:, 0] = 0.0
        garbage = {k: 100 * torch.randn_like(v) for k, v in m.initial(2).items()}
        post_b, _, _ = m.observe(embed[:, 5:], act_b, is_first[:, 5:], garbage, sample=False)
    torch.testing.assert_close(post["deter"][:, 5:], post_b["deter"], **checks.TOL)


DRAMA = {"bc_norm": False, "gated_norm": False}  # mamba_ssm's Mamba-1 mixer, as Drama uses it


@pytest.mark.parametrize("kw", [DRAMA, {"bc_norm": False}, {"gated_norm": False}],
                         ids=["drama", "gated_norm-only", "bc_norm-only"])
@pytest.mark.parametrize("check", [checks.check_parallel_equals_recurrent,
                                   checks.check_reset_equals_two_sequences,
                                   checks.check_step_paths_agree,
                                   checks.check_gradients_reach_every_parameter],
                         ids=lambda c: c.__name__[len("check_"):])
def test_contract_without_the_normalisations(check, kw):
    """The contract (run for the default in test_backbone_contract) holds with either
    normalisation off: the kernel step's gate is plain silu(z), the gated norm comes after it."""
    check("mamba", **kw)


def test_normalisations():
    """bc_norm: B and C of unit RMS over d_state; gated_norm: the gated output normalised (times
    norm_scale) before out_proj; both off: the plain mixer, with no norm_scale."""
    on, off = checks.make("mamba").mixers[0], checks.make("mamba", **DRAMA).mixers[0]
    assert on.bc_norm and on.gated_norm and hasattr(on, "norm_scale")
    assert not hasattr(off, "norm_scale")
    assert {k for k, _ in on.named_parameters()} - {k for k, _ in off.named_parameters()} == {
        "norm_scale"}
    xc = torch.randn(5, on.d_inner)
    _, b, c = on._ssm_inputs(xc)
    for t in (b, c):
        torch.testing.assert_close(t.square().mean(-1), torch.ones(5), atol=1e-4, rtol=0)
    _, b0, c0 = off._ssm_inputs(xc)
    raw = off.x_proj(xc).split([off.dt_rank, off.d_state, off.d_state], -1)
    torch.testing.assert_close((b0, c0), raw[1:])
    assert b0.square().mean() < 0.5  # x_proj's init: far below unit RMS (why bc_norm helps)
    y, z = torch.randn(5, on.d_inner), torch.randn(5, on.d_inner)
    with torch.no_grad():
        on.norm_scale.fill_(2.0)
    g = on._gate(y, z)
    torch.testing.assert_close(g.square().mean(-1), torch.full((5,), 4.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(g / g.norm(dim=-1, keepdim=True),
                               (y * F.silu(z)) / (y * F.silu(z)).norm(dim=-1, keepdim=True))
    torch.testing.assert_close(off._gate(y, z), y * F.silu(z))
