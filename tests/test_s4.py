"""The S4-family backbone (worldrl.backbones.s4): S5 layers over kernels.linear_scan."""

import pytest
import torch

from tests import ssm_checks as checks
from worldrl.backbones import BACKBONES, S4
from worldrl.backbones.s4 import hippo_n_eigenvalues

torch.set_num_threads(1)


def test_registry_shapes_and_sizes():
    assert BACKBONES["s4"] is S4
    m = checks.make("s4")
    assert m.d_model == 16 and m.d_state == 8 and m.deter_size == 16
    assert m.feat_size == 16 + 20
    assert m.state_spec() == {"deter": (16,), "stoch": (20,), "s5_0_h": (8, 2),
                              "s5_1_h": (8, 2)}
    assert checks.make("s4", d_model=24, d_state=5, layers=3).state_spec()["s5_2_h"] == (5, 2)
    with pytest.raises(ValueError, match="layers"):
        checks.make("s4", layers=0)
    with pytest.raises(ValueError, match=r"\['dstate'\].*valid"):
        checks.make("s4", dstate=4)


def test_hippo_n_init_and_stable_discretisation():
    lam = hippo_n_eigenvalues(8)
    assert torch.allclose(lam.real, torch.full((8,), -0.5, dtype=torch.float64))
    assert (lam.imag > 0).all() and (lam.imag.diff() > 0).all()
    m = checks.make("s4")
    lam_bar, _, _ = m.blocks[0].ssm.discretise()
    assert (lam_bar.abs() < 1).all()
