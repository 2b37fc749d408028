"""World model (worldrl.world_model), its codecs (worldrl.nets) and heads (worldrl.heads)."""

import pytest
import torch
import torch.nn.functional as F

from worldrl.heads import ContinueHead, CriticHead, RewardHead
from worldrl.nets import BlockLinear, ConvDecoder, ConvEncoder, Norm
from worldrl.obs import MultiEncoder
from worldrl.world_model import WorldModel, shift_actions

torch.set_num_threads(1)

A = 3
BACKBONE = dict(deter=16, hidden=8, stoch=2, classes=4, blocks=2)
CODEC = dict(units=16, depth=2, mults=[1, 2, 2, 2], kernel=3, strided=True)
SPACE = {"pixels": ((3, 64, 64), torch.uint8), "vector": ((5,), torch.float32)}


def make_wm(space=SPACE, **kw):
    torch.manual_seed(0)
    return WorldModel(space, A, "rssm", BACKBONE, encoder=CODEC,
                      decoder={**CODEC, "bspace": 2}, reward_head={"units": 8},
                      cont_head={"units": 8}, **kw)


def make_batch(B=2, T=6, keys=("pixels", "vector"), seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch = {
        "action": F.one_hot(torch.randint(0, A, (B, T), generator=gen), A).float(),
        "reward": torch.randn(B, T, generator=gen),
        "is_first": torch.zeros(B, T, dtype=torch.bool),
        "terminated": torch.zeros(B, T, dtype=torch.bool),
    }
    batch["is_first"][:, 0] = True
    if "pixels" in keys:
        batch["pixels"] = torch.randint(0, 256, (B, T, 3, 64, 64), generator=gen,
                                        dtype=torch.uint8)
    if "vector" in keys:
        batch["vector"] = torch.randn(B, T, 5, generator=gen)
    return batch


def test_shift_actions():
    action = torch.arange(1, 13, dtype=torch.float32).reshape(2, 3, 2)
    is_first = torch.tensor([[True, False, False], [False, True, False]])
    prev = shift_actions(action, is_first)
    torch.testing.assert_close(prev[0], torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 4.0]]))
    torch.testing.assert_close(prev[1], torch.tensor([[0.0, 0.0], [0.0, 0.0], [9.0, 10.0]]))


def test_loss_terms_shapes_and_scales():
    wm = make_wm()
    batch = make_batch()
    total, terms, post, metrics = wm.loss(batch)
    assert set(terms) == {"pixels", "vector", "rew", "con", "dyn", "rep"}
    assert all(v.shape == (2, 6) for v in terms.values())
    expect = sum(wm.scale(k) * v.mean() for k, v in terms.items())
    torch.testing.assert_close(total, expect)
    assert wm.scale("rep") == 0.1 and wm.scale("dyn") == 1.0 and wm.scale("pixels") == 1.0
    assert (terms["dyn"] >= 1.0).all() and (terms["rep"] >= 1.0).all()  # free nats
    assert post["deter"].shape == (2, 6, 16) and post["stoch"].shape == (2, 6, 8)
    assert {"kl/dyn", "loss/pixels", "post_ent", "prior_ent"} <= set(metrics)
    # zero-initialised reward head: loss = -log(1/255) spread over two bins at init
    assert terms["rew"].max() < 6.0
    total.backward()
    for name, mod in [("encoder", wm.encoder), ("backbone", wm.backbone),
                      ("decoder", wm.decoder), ("reward", wm.reward_head), ("cont", wm.cont_head)]:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters()), name
    # per-key and global scales come from the config
    wm2 = make_wm(loss_scales={"rep": 0.5, "pixels": 2.0, "rec": 3.0})
    assert wm2.scale("rep") == 0.5 and wm2.scale("pixels") == 2.0 and wm2.scale("vector") == 3.0
    with pytest.raises(ValueError, match=r"'kl'.*valid"):
        make_wm(loss_scales={"kl": 1.0})


def test_continue_target_and_reward_grad():
    wm = make_wm(cont_target_scale=0.997, reward_grad=False)
    batch = make_batch()
    batch["terminated"][0, 4] = True
    with torch.no_grad():  # constant logit 2 so the loss reveals the target
        wm.cont_head.out.weight.zero_()
        wm.cont_head.out.bias.fill_(2.0)
    _, terms, _, _ = wm.loss(batch)
    target = torch.full((2, 6), 0.997)
    target[0, 4] = 0.0
    logit = torch.full((2, 6), 2.0)
    torch.testing.assert_close(
        terms["con"], F.binary_cross_entropy_with_logits(logit, target, reduction="none"))
    wm.zero_grad()
    _, terms, _, _ = wm.loss(batch)
    terms["rew"].sum().backward()
    assert all(p.grad is None for p in wm.encoder.parameters())  # reward_grad=False
    assert any(p.grad is not None for p in wm.reward_head.parameters())


def test_batch_validation_errors():
    wm = make_wm()
    batch = make_batch()
    del batch["terminated"]
    with pytest.raises(KeyError, match="terminated"):
        wm.loss(batch)
    batch = make_batch()
    batch["reward"] = batch["reward"][..., None]
    with pytest.raises(ValueError, match="reward"):
        wm.loss(batch)


def test_open_loop_video_and_vector_only():
    wm = make_wm()
    batch = make_batch(B=2, T=7)
    videos, metrics = wm.open_loop(batch, context=3)
    assert set(videos) == {"pixels"}
    v = videos["pixels"]
    assert v.dtype == torch.uint8 and v.shape == (2, 7, 3, 3 * 64, 64)
    assert torch.equal(v[:, :, :, :64], batch["pixels"])  # truth on top
    assert {"openloop/pixels_mse", "openloop/vector_mse"} <= set(metrics)
    wm_vec = make_wm({"vector": SPACE["vector"]})
    videos, metrics = wm_vec.open_loop(make_batch(keys=("vector",)), context=2)
    assert videos == {} and torch.isfinite(metrics["openloop/vector_mse"])
    with pytest.raises(ValueError, match="context"):
        wm_vec.open_loop(make_batch(keys=("vector",), T=4), context=4)


def test_obs_key_selection():
    space = {**SPACE, "life_loss": ((), torch.bool), "is_first": ((), torch.bool)}
    wm = make_wm(space)
    assert wm.obs_keys == ["pixels", "vector"]
    with pytest.raises(ValueError, match="life_loss"):
        make_wm(space, obs_keys=["vector", "life_loss"])
    with pytest.raises(ValueError, match="audio"):
        make_wm(space, obs_keys=["audio"])


@pytest.mark.parametrize("strided", [True, False])
def test_conv_encoder_decoder_shapes(strided):
    enc = ConvEncoder(3, (64, 64), depth=2, mults=(1, 2, 2, 2), kernel=3, strided=strided)
    x = torch.rand(5, 3, 64, 64) - 0.5
    y = enc(x)
    assert y.shape == (5, 4 * 4 * 4) == (5, enc.out_features)
    dec = ConvDecoder(16, 8, 3, (64, 64), depth=2, mults=(1, 2, 2, 2), kernel=3, units=8,
                      bspace=2, strided=strided)
    img = dec(torch.randn(5, 24))
    assert img.shape == (5, 3, 64, 64) and img.min() >= 0 and img.max() <= 1
    with pytest.raises(ValueError, match="resolution"):
        ConvEncoder(3, (60, 60), depth=2, mults=(1, 2, 2, 2))


def test_multi_encoder_normalises_inputs():
    enc = MultiEncoder({"pixels": ((3, 64, 64), torch.uint8)}, **CODEC)
    with pytest.raises(TypeError, match="uint8"):
        enc({"pixels": torch.rand(2, 3, 64, 64)})
    out = enc({"pixels": torch.zeros(2, 4, 3, 64, 64, dtype=torch.uint8)})
    assert out.shape == (2, 4, enc.out_features)


def test_block_linear_is_block_diagonal_and_norm():
    lin = BlockLinear(8, 6, blocks=2)
    x = torch.randn(4, 8)
    y = lin(x)
    x2 = x.clone()
    x2[:, 4:] += 1.0  # change only the second block's input
    y2 = lin(x2)
    torch.testing.assert_close(y[:, :3], y2[:, :3])
    assert not torch.allclose(y[:, 3:], y2[:, 3:])
    rms = Norm(8, "rms")(torch.randn(3, 8) * 10)
    torch.testing.assert_close(rms.square().mean(-1), torch.ones(3), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="choices"):
        Norm(8, "batch")


def test_heads_zero_init_and_losses():
    feat = torch.randn(2, 5, 10)
    for head in (RewardHead(10, units=8), CriticHead(10, units=8)):
        assert head.out.weight.abs().max() == 0
        assert head(feat).pred().abs().max() == 0  # predicts exactly 0 at init
        assert head.loss(feat, torch.randn(2, 5)).shape == (2, 5)
    cont = ContinueHead(10, units=8)
    loss = cont.loss(feat, torch.ones(2, 5))
    assert loss.shape == (2, 5) and (loss > 0).all()
    assert cont(feat).prob().shape == (2, 5)
