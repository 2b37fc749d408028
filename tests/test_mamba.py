"""The Mamba backbone (worldrl.backbones.mamba): kernels.selective_scan over sequences,
kernels.selective_state_update for single steps, resettable conv and scan state."""

import pytest
import torch

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
