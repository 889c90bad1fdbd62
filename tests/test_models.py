"""Models: the spec contract, identity at initialisation, invariances, shapes, learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from enspp.models import ModelSpec, ModelSpecError, StatsError, build_model, loss_for
from enspp.models.losses import LossError, crps_gaussian
from enspp.models.normalize import Normalizer, resolve_stats

CHANNELS = ("t2m@48h", "z500@48h", "t2m@24h")
MEAN = np.array([280.0, 5500.0, 279.0], dtype=np.float32)
STD = np.array([3.0, 100.0, 3.0], dtype=np.float32)
GRID = (12, 16)
GRID_MODELS = ("emos_global", "emos_local", "mlp", "unet", "mixed")
SMALL = {
    "emos_global": {},
    "emos_local": {},
    "mlp": {"hidden": [16]},
    "unet": {"width": 8, "depth": 1},
    "mixed": {"embed_dim": 8, "encoder_hidden": [8], "width": 8, "depth": 1},
}


def make_stats(grid: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Statistics in the layout of ``pipeline.stats.NormStats.to_dict()``."""
    r = np.random.default_rng(seed)
    c = len(CHANNELS)
    return {
        "channel_mean": MEAN,
        "channel_std": STD,
        "channel_mean_local": (MEAN[:, None, None] + r.normal(0, 0.5, (c, *grid))).astype(np.float32),
        "channel_std_local": (STD[:, None, None] * r.uniform(0.8, 1.2, (c, *grid))).astype(np.float32),
        "target_mean": MEAN[:1],
        "target_std": STD[:1],
        "channels": np.asarray(CHANNELS, dtype=str),
        "targets": np.asarray(["t2m"], dtype=str),
        "hash": "abc",
    }


def make_spec(name: str = "mixed", *, grid: tuple[int, int] = GRID, **kw) -> ModelSpec:
    args = dict(
        name=name,
        channels=CHANNELS,
        targets=("t2m",),
        target_channels=(0,),
        static_names=("lsm", "orog"),
        n_members=5,
        grid_shape=grid,
        stats=make_stats(grid),
        options=SMALL.get(name, {}),
    )
    args.update(kw)
    return ModelSpec(**args)


def toy_batch(
    gen: torch.Generator, *, b: int = 16, k: int = 5, h: int = 8, w: int = 8, grid: tuple[int, int] = GRID,
    bias: float = 1.5, spread: float = 0.3, censored: bool = False,
) -> dict[str, torch.Tensor]:
    """Truth ``y = z + N(0, 1)``; members ``z + bias + spread * N(0, 1)`` (biased, under-dispersed)."""
    point = grid[1] == 1
    z = 280.0 + 3.0 * torch.randn(b, 1, h, w, generator=gen)
    if censored:
        z = z - 280.0
    members = z[:, None] + bias + spread * torch.randn(b, k, 1, h, w, generator=gen)
    y = z + torch.randn(b, 1, h, w, generator=gen)
    if censored:
        members, y = members.clamp(min=0.0), y.clamp(min=0.0)
    others = torch.stack(
        [5500.0 + 100.0 * torch.randn(b, k, h, w, generator=gen), members[:, :, 0] - 1.0 + 0.1 * torch.randn(b, k, h, w, generator=gen)],
        dim=2,
    )
    y0 = torch.zeros(b, dtype=torch.long) if point else torch.randint(0, grid[0] - h + 1, (b,), generator=gen)
    x0 = torch.randint(0, grid[0] if point else grid[1] - w + 1, (b,), generator=gen)
    return {
        "inputs": torch.cat([members, others], dim=2),
        "static": torch.randn(b, 2, h, w, generator=gen),
        "target": y,
        "y0": y0,
        "x0": x0,
    }


def raw_moments(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    raw = batch["inputs"][:, :, :1]
    return raw.mean(dim=1), raw.std(dim=1)


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread is much faster than two on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- identity at initialisation, shapes, invariances --------------------------------------
@pytest.mark.parametrize("name", GRID_MODELS)
def test_untrained_model_is_the_raw_ensemble(name: str) -> None:
    # an unfitted anchor EMOS is the raw ensemble too (to its variance term of ~1e-8 std^2)
    model = build_model(make_spec(name, options={}))
    # realistic spread (0.3 target std); H, W not divisible by 2**depth
    batch = toy_batch(torch.Generator().manual_seed(1), h=7, w=13, spread=1.0)
    out = model(batch)
    mu, sd = raw_moments(batch)
    assert out["mu"].shape == out["sigma"].shape == (16, 1, 7, 13)
    torch.testing.assert_close(out["mu"], mu, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(out["sigma"], sd, rtol=1e-5, atol=1e-6)


def test_untrained_censored_model_is_the_raw_ensemble_latent() -> None:
    model = build_model(make_spec("mixed", distribution="censored_logistic",
                                  options={**SMALL["mixed"], "anchor": "raw"}))
    batch = toy_batch(torch.Generator().manual_seed(2))
    out = model(batch)
    mu, sd = raw_moments(batch)
    assert set(out) == {"mu", "sigma", "loc", "scale"}
    torch.testing.assert_close(out["loc"], mu, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(out["scale"], sd * math.sqrt(3) / math.pi, rtol=1e-5, atol=1e-6)
    assert (out["mu"] >= out["loc"]).all() and (out["mu"] > 0).all()


def perturbed(model: torch.nn.Module, scale: float = 0.2) -> torch.nn.Module:
    """``model`` with every parameter moved by seeded noise of std ``scale`` (a non-trivial
    network: the zero-initialised head would otherwise return the anchor)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model


def test_mixed_ignores_member_order_and_takes_any_k() -> None:
    model = perturbed(build_model(make_spec("mixed")))
    gen = torch.Generator().manual_seed(3)
    batch = toy_batch(gen, b=2)
    perm = dict(batch, inputs=batch["inputs"][:, torch.randperm(5, generator=gen)])
    out, out_perm = model(batch), model(perm)
    assert not torch.allclose(out["mu"], raw_moments(batch)[0])
    torch.testing.assert_close(out["mu"], out_perm["mu"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["sigma"], out_perm["sigma"], rtol=1e-5, atol=1e-5)
    for k in (1, 2, 9):
        out_k = model(toy_batch(gen, b=2, k=k))
        assert out_k["mu"].shape == (2, 1, 8, 8)
        assert torch.isfinite(out_k["sigma"]).all() and (out_k["sigma"] > 0).all()


@pytest.mark.parametrize("backbone", ["unet", "resnet"])
def test_mixed_backbones_fully_convolutional(backbone: str) -> None:
    options = dict(SMALL["mixed"], backbone=backbone, depth=2, n_blocks=2)
    model = build_model(make_spec("mixed", options=options, grid=(9, 21)))
    batch = toy_batch(torch.Generator().manual_seed(4), b=1, h=9, w=21, grid=(9, 21))
    assert model(batch)["mu"].shape == (1, 1, 9, 21)
    patch = {k: (v[..., 2:7, 3:14] if k in ("inputs", "static", "target") else v) for k, v in batch.items()}
    patch["y0"], patch["x0"] = torch.tensor([2]), torch.tensor([3])
    assert model(patch)["mu"].shape == (1, 1, 5, 11)


@pytest.mark.parametrize("backbone", ["unet", "resnet"])
def test_inference_path_equals_training_path(backbone: str, monkeypatch) -> None:
    """Inference (no autograd: oneDNN's fused convolution + GELU where available) gives the
    training path's values to float rounding, and the unfused fallback the same."""
    from enspp.models import unet

    torch.manual_seed(0)
    options = dict(SMALL["mixed"], backbone=backbone, depth=2, n_blocks=2)
    model = perturbed(build_model(make_spec("mixed", options=options, grid=(20, 28))), 0.05)
    batch = toy_batch(torch.Generator().manual_seed(5), b=2, h=20, w=28, grid=(20, 28))
    trained = model(batch)  # autograd on: the plain modules
    with torch.inference_mode():
        fused = model(batch)
        monkeypatch.setattr(unet, "FUSED_CONV_GELU", False)
        plain = model(batch)
    for key in ("mu", "sigma"):
        torch.testing.assert_close(fused[key], trained[key].detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain[key], trained[key].detach(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(trained["mu"], raw_moments(batch)[0])


def test_upsampled_weight_is_a_convolution_of_the_upsampled_input() -> None:
    """A 3x3 convolution (padding 1) of the 2x nearest-upsampled input is the stride-2
    transposed convolution of the input itself with :func:`models.unet.upsampled_weight`."""
    import torch.nn.functional as F

    from enspp.models.unet import upsampled_weight

    gen = torch.Generator().manual_seed(21)
    w = torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64)
    for h, wd in ((4, 6), (1, 1), (3, 5)):
        y = torch.randn(2, 3, h, wd, generator=gen, dtype=torch.float64)
        plain = F.conv2d(F.interpolate(y, scale_factor=2.0, mode="nearest"), w, padding=1)
        direct = F.conv_transpose2d(y, upsampled_weight(w), stride=2, padding=1)
        torch.testing.assert_close(direct, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 9), (1, 1), (4, 10)])
def test_decoder_block_inference_path_equals_the_plain_block(shape, monkeypatch) -> None:
    """:func:`models.unet.run_up_block` in inference (no upsampled tensor, no concatenation)
    gives the plain upsample -> concatenate -> conv block's values to float rounding, for
    inputs in either memory format, and falls back to it with the fused path off."""
    import torch.nn.functional as F

    from enspp.models import unet

    gen = torch.Generator().manual_seed(22)
    block = unet.conv_block(12 + 6, 8)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    h, w = shape
    y = torch.randn(2, 12, h, w, generator=gen)
    skip = torch.randn(2, 6, 2 * h, 2 * w, generator=gen)
    plain = block(torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), skip], dim=1))
    with torch.inference_mode():
        fast = unet.run_up_block(block, y, skip)
        last = unet.run_up_block(block, y.contiguous(memory_format=torch.channels_last),
                                 skip.contiguous(memory_format=torch.channels_last))
        monkeypatch.setattr(unet, "FUSED_CONV_GELU", False)
        off = unet.run_up_block(block, y, skip)
    for got in (fast, last, off):
        assert got.shape == plain.shape
        torch.testing.assert_close(got, plain.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gelu", [True, False])
def test_linear_last_inference_path_equals_linear(gelu: bool, monkeypatch) -> None:
    """:func:`models.mixed.linear_last` (a oneDNN 1x1 convolution in inference) gives
    ``F.linear`` (then GELU) to float rounding on members, fields and points alike."""
    import torch.nn.functional as F

    from enspp.models import unet
    from enspp.models.mixed import linear_last

    gen = torch.Generator().manual_seed(23)
    weight = torch.randn(7, 6, 1, 1, generator=gen)
    bias = torch.randn(7, generator=gen)
    for shape in ((2, 5, 9, 11, 6), (1, 13, 17, 6), (40, 1, 1, 6), (3, 6)):
        x = torch.randn(shape, generator=gen)
        want = F.linear(x, weight.flatten(1), bias)
        want = F.gelu(want) if gelu else want
        with torch.inference_mode():
            got = linear_last(x, weight, bias, gelu=gelu)
            no_bias = linear_last(x, weight, None, gelu=False)
            monkeypatch.setattr(unet, "FUSED_CONV_GELU", False)
            off = linear_last(x, weight, bias, gelu=gelu)
            monkeypatch.undo()
        for out in (got, off):
            assert out.shape == want.shape
            torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(no_bias, F.linear(x, weight.flatten(1)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_member_encoder_inference_equals_training(k: int) -> None:
    """The encoder in inference (members projected first, pooled in place) gives the
    training formulation's pooled mean and std of the embeddings to float rounding."""
    from enspp.models.mixed import MemberEncoder

    torch.manual_seed(0)
    enc = MemberEncoder(6, [16], 8)
    with torch.no_grad():
        enc.proj.bias.normal_()
    features = torch.randn(2, k, 9, 13, 6, generator=torch.Generator().manual_seed(k))
    trained = enc(features)  # autograd on
    with torch.inference_mode():
        fast = enc(features)
    assert fast.shape == (2, 9, 13, 16)
    torch.testing.assert_close(fast, trained.detach(), rtol=1e-5, atol=1e-6)


def test_mixed_inference_on_a_field_equals_the_plain_path(monkeypatch) -> None:
    """The default ``mixed`` (width 32, depth 2: the decoder's transposed convolutions, the
    oneDNN encoder and head) on a whole field whose size is not a multiple of 4 gives the
    plain modules' values (no fused path) to float rounding."""
    from enspp.models import unet

    torch.manual_seed(0)
    grid = (37, 50)
    model = build_model(make_spec("mixed", options={}, grid=grid))
    with torch.no_grad():  # a head that reads the backbone (zero-initialised otherwise)
        model.out.weight.normal_(0.0, 0.05)
        model.out.bias.normal_(0.0, 0.05)
    batch = toy_batch(torch.Generator().manual_seed(24), b=1, h=grid[0], w=grid[1], grid=grid)
    with torch.inference_mode():
        fast = model(batch)
        monkeypatch.setattr(unet, "FUSED_CONV_GELU", False)
        plain = model(batch)
    for key in ("mu", "sigma"):
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain["mu"], raw_moments(batch)[0])


@pytest.mark.parametrize("backbone", ["unet", "resnet"])
def test_tile_interior_equals_whole_field(backbone: str) -> None:
    """Fully convolutional: away from a tile's edge (receptive field) its output equals the
    whole-field output, for tile origins on the U-Net's pooling grid (multiples of 2**depth)."""
    torch.manual_seed(0)
    options = dict(SMALL["mixed"], backbone=backbone, depth=1, n_blocks=2)
    model = perturbed(build_model(make_spec("mixed", options=options, grid=(40, 40))))
    with torch.no_grad():
        batch = toy_batch(torch.Generator().manual_seed(14), b=1, h=40, w=40, grid=(40, 40))
        batch["y0"], batch["x0"] = torch.tensor([0]), torch.tensor([0])
        whole = model(batch)["mu"]
        tile = {k: (v[..., 8:32, 12:36] if k in ("inputs", "static", "target") else v) for k, v in batch.items()}
        tile["y0"], tile["x0"] = torch.tensor([8]), torch.tensor([12])
        part = model(tile)["mu"]
    assert not torch.allclose(whole, raw_moments(batch)[0])
    torch.testing.assert_close(part[..., 10:14, 10:14], whole[..., 18:22, 22:26], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["emos_global", "emos_local", "mlp", "mixed"])
def test_point_data_shapes_and_identity(name: str) -> None:
    spec = make_spec(name, grid=(6, 1))
    assert spec.is_point
    model = build_model(spec)
    batch = toy_batch(torch.Generator().manual_seed(5), b=10, h=1, w=1, grid=(6, 1))
    out = model(batch)
    assert out["mu"].shape == (10, 1, 1, 1)
    torch.testing.assert_close(out["mu"], raw_moments(batch)[0], rtol=1e-6, atol=1e-4)


def test_local_normalisation_reads_the_patch() -> None:
    stats = make_stats(GRID)
    norm = Normalizer(
        resolve_stats(stats, channels=CHANNELS, targets=("t2m",), target_channels=(0,), grid_shape=GRID), point=False
    )
    got = norm.lookup("channel_mean_local", torch.tensor([0, 3]), torch.tensor([5, 1]), 4, 6)
    np.testing.assert_array_equal(got[1].numpy(), stats["channel_mean_local"][:, 3:7, 1:7])
    np.testing.assert_array_equal(got[0].numpy(), stats["channel_mean_local"][:, 0:4, 5:11])
    with pytest.raises(StatsError, match="x0 .* out of range"):
        norm.lookup("channel_mean_local", torch.tensor([0]), torch.tensor([11]), 4, 6)


# ---- learning ------------------------------------------------------------------------------
def fit(model: torch.nn.Module, gen: torch.Generator, *, steps: int, lr: float, **batch_kw) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        batch = toy_batch(gen, **batch_kw)
        loss = model.loss(model(batch), batch["target"])
        opt.zero_grad()
        loss.backward()
        opt.step()


LEARN = {"emos_global": (200, 0.05), "emos_local": (200, 0.05), "mlp": (200, 0.01), "unet": (150, 0.01), "mixed": (150, 0.01)}


@pytest.mark.parametrize("name", GRID_MODELS)
def test_model_learns_bias_and_spread(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(make_spec(name))
    gen = torch.Generator().manual_seed(6)
    steps, lr = LEARN[name]
    fit(model, gen, steps=steps, lr=lr)
    test = toy_batch(torch.Generator().manual_seed(99), b=32)
    with torch.no_grad():
        trained = model.loss(model(test), test["target"]).item()
        raw = model.raw_loss(test, estimator="fair").item()
    # raw: biased by 0.5 std and under-dispersed; the ideal N(z, 1) scores ~0.19 here
    assert trained < 0.75 * raw, (name, trained, raw)


@pytest.mark.parametrize("name", ["mlp", "unet", "mixed"])
def test_mean_shift_local_starts_raw_and_moves_in_local_target_units(name: str) -> None:
    """``mean_shift="ensemble+local"``: a third head channel per target whose unit is the
    target's local training std, so the mean moves even where the members collapse."""
    opts = {**SMALL[name], "mean_shift": "ensemble+local"}
    stats = make_stats(GRID)
    t_local = np.random.default_rng(3).uniform(1.0, 4.0, (1, *GRID)).astype(np.float32)
    stats["target_std_local"] = t_local
    model = build_model(make_spec(name, options=opts, stats=stats))
    assert model.head_channels == 3 and build_model(make_spec(name)).head_channels == 2
    batch = toy_batch(torch.Generator().manual_seed(4), spread=0.0)  # collapsed members
    mu, _ = raw_moments(batch)
    with torch.no_grad():
        out = model(batch)
        torch.testing.assert_close(out["mu"], mu, rtol=1e-6, atol=1e-4)
        model.out.bias[2] = 0.5  # c = 0.5 everywhere
        shifted = model(batch)["mu"]
    y0, x0 = batch["y0"], batch["x0"]
    want = torch.stack([torch.as_tensor(t_local[:, y:y + 8, x:x + 8]) for y, x in zip(y0.tolist(), x0.tolist())])
    torch.testing.assert_close(shifted - mu, 0.5 * want, rtol=1e-5, atol=1e-4)
    glob = build_model(make_spec(name, options={**opts, "normalization": "global"}, stats=stats))
    with torch.no_grad():
        glob.out.bias[2] = 0.5
        moved = glob(batch)["mu"] - mu
    torch.testing.assert_close(moved, torch.full_like(moved, 0.5 * float(STD[0])), rtol=1e-5, atol=1e-4)
    with pytest.raises(ModelSpecError, match="mean_shift='climate'"):
        build_model(make_spec(name, options={**SMALL[name], "mean_shift": "climate"}))


def test_mean_shift_local_learns_a_shift_where_members_collapse() -> None:
    """Members with ~no spread and a bias of 1.5 target stds (a saturated, damped extreme):
    the ensemble-anchored head must move the mean in units of the collapsed spread and stays
    far from the truth; the local-std correction learns the bias in the same steps."""
    losses = {}
    for shift in ("ensemble", "ensemble+local"):
        torch.manual_seed(0)
        model = build_model(make_spec("mlp", options={"hidden": [16], "mean_shift": shift}))
        kw = dict(spread=1e-3, bias=4.5)
        fit(model, torch.Generator().manual_seed(8), steps=150, lr=0.01, **kw)
        test = toy_batch(torch.Generator().manual_seed(97), b=32, **kw)
        with torch.no_grad():
            losses[shift] = model.loss(model(test), test["target"]).item()
    # the ideal N(z, 1) scores ~0.19 (in target stds, 3 here); a mean 1.5 stds off ~1.2
    assert losses["ensemble+local"] < 0.35 < 0.8 < losses["ensemble"], losses


@pytest.mark.parametrize("name", ["mlp", "mixed"])
def test_point_model_learns(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(make_spec(name, grid=(6, 1)))
    kw = dict(b=64, h=1, w=1, grid=(6, 1))
    fit(model, torch.Generator().manual_seed(7), steps=200, lr=0.01, **kw)
    test = toy_batch(torch.Generator().manual_seed(98), **kw)
    with torch.no_grad():
        assert model.loss(model(test), test["target"]) < 0.75 * model.raw_loss(test)


def test_censored_model_learns() -> None:
    torch.manual_seed(0)
    model = build_model(make_spec("mixed", distribution="censored_logistic"))
    fit(model, torch.Generator().manual_seed(8), steps=150, lr=0.01, censored=True)
    test = toy_batch(torch.Generator().manual_seed(97), b=32, censored=True)
    with torch.no_grad():
        out = model(test)
        assert (out["mu"] >= 0).all()
        assert model.loss(out, test["target"]) < 0.8 * model.raw_loss(test)


# ---- loss, round trip ----------------------------------------------------------------------
def test_loss_for_matches_model_loss_and_names_estimator() -> None:
    spec = make_spec("emos_global")
    model = build_model(spec)
    batch = toy_batch(torch.Generator().manual_seed(9))
    out = model(batch)
    expected = (crps_gaussian(out["mu"], out["sigma"], batch["target"]) / float(STD[0])).mean()
    torch.testing.assert_close(model.loss(out, batch["target"]), expected)
    torch.testing.assert_close(loss_for(spec)(out, batch["target"], estimator="gaussian"), expected)
    assert model.crps_estimator == "gaussian"
    with pytest.raises(LossError, match="estimator 'fair' does not apply"):
        model.loss(out, batch["target"], estimator="fair")


def test_spec_and_state_round_trip() -> None:
    spec = make_spec("mixed")
    model = build_model(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    rebuilt = build_model(ModelSpec.from_dict(spec.to_dict()))
    rebuilt.load_state_dict(model.state_dict())
    assert "norm.channel_mean_local" in model.state_dict()
    batch = toy_batch(torch.Generator().manual_seed(10), b=2)
    torch.testing.assert_close(model(batch)["sigma"], rebuilt(batch)["sigma"])


# ---- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw,match",
    [
        ({"name": "gbm"}, "unknown model name 'gbm'"),
        ({"distribution": "gamma"}, "unknown distribution 'gamma'"),
        ({"targets": ()}, "at least one channel and one target"),
        ({"target_channels": (0, 1)}, "one channel index per target"),
        ({"target_channels": (7,)}, "out of range for 3 channels"),
        ({"n_members": 0}, "n_members must be >= 1"),
        ({"grid_shape": (0, 4)}, "grid_shape must be"),
    ],
)
def test_spec_errors(kw: dict, match: str) -> None:
    kw = dict(kw)
    with pytest.raises(ModelSpecError, match=match):
        make_spec(kw.pop("name", "mixed"), **kw)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda s: s.pop("channel_mean"), "stats lack 'channel_mean'"),
        (lambda s: s.update(channel_std=np.ones(2)), "has shape \\(2,\\), expected \\(3,\\)"),
        (lambda s: s.update(channel_std=np.array([1.0, 0.0, 1.0])), "must be > 0"),
        (lambda s: s.update(channel_mean=np.array([1.0, np.nan, 1.0])), "non-finite"),
        (lambda s: s.update(channel_mean_local=np.zeros((3, 2, 2))), "channel_mean_local.*expected \\(3, 12, 16\\)"),
        (lambda s: s.update(channels=np.array(["a", "b", "c"])), "does not match the spec's channels"),
    ],
)
def test_stats_errors(edit, match: str) -> None:
    stats = make_stats(GRID)
    edit(stats)
    with pytest.raises(StatsError, match=match):
        make_spec("mixed", stats=stats)
    with pytest.raises(StatsError, match="must be a mapping"):
        make_spec("mixed", stats=[1, 2])


def test_stats_fallbacks() -> None:
    stats = make_stats(GRID)
    stats["channel_std_local"][1, 2, 3] = 0.0
    for key in ("channel_mean_local", "target_mean", "target_std"):
        stats.pop(key)
    r = resolve_stats(stats, channels=CHANNELS, targets=("t2m",), target_channels=(2,), grid_shape=GRID)
    assert r["channel_std_local"][1, 2, 3] == STD[1]
    np.testing.assert_array_equal(r["channel_mean_local"][:, 0, 0], MEAN)
    assert r["target_std"][0] == STD[2]
    np.testing.assert_array_equal(r["target_std_local"][0], r["channel_std_local"][2])


def test_local_stats_resolve_the_same_from_float32_and_float64() -> None:
    """Float32 statistics (the pipeline's) are checked as they are: the same resolved values
    as their float64 copy, bad points (non-finite, std <= 0) replaced by the global value."""
    stats = make_stats(GRID)
    stats["channel_std_local"][0, 1, 1] = -1.0
    stats["channel_std_local"][2, 0, 5] = np.nan
    stats["channel_mean_local"][1, 3, 2] = np.inf
    wide = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v)
            for k, v in stats.items()}
    kw = dict(channels=CHANNELS, targets=("t2m",), target_channels=(0,), grid_shape=GRID)
    r32, r64 = resolve_stats(stats, **kw), resolve_stats(wide, **kw)
    for key in r32:
        assert r32[key].dtype == np.float32 and r64[key].dtype == np.float32
        np.testing.assert_array_equal(r32[key], r64[key])
    assert r32["channel_std_local"][0, 1, 1] == STD[0] and r32["channel_std_local"][2, 0, 5] == STD[2]
    assert r32["channel_mean_local"][1, 3, 2] == MEAN[1]
    assert r32["channel_std_local"][0, 0, 0] == stats["channel_std_local"][0, 0, 0]
    # the resolved arrays are copies: the statistics are not written through them
    r32["channel_mean_local"][:] = 0.0
    assert stats["channel_mean_local"][0, 0, 0] != 0.0


def test_one_patch_lookup_equals_the_gathered_patches() -> None:
    """A single patch (predict's whole field or tile) is looked up as a view; its values are
    those of the batched gather."""
    from enspp.models.normalize import gather_patch

    table = torch.randn(3, 12, 16, generator=torch.Generator().manual_seed(25))
    y0, x0 = torch.tensor([0, 2, 5]), torch.tensor([0, 7, 3])
    batched = gather_patch(table, y0, x0, 6, 9, point=False)
    for i in range(3):
        one = gather_patch(table, y0[i:i + 1], x0[i:i + 1], 6, 9, point=False)
        assert one.shape == (1, 3, 6, 9)
        torch.testing.assert_close(one[0], batched[i], rtol=0, atol=0)
    whole = gather_patch(table, torch.tensor([0]), torch.tensor([0]), 12, 16, point=False)
    torch.testing.assert_close(whole[0], table, rtol=0, atol=0)
    with pytest.raises(StatsError, match="out of range"):
        gather_patch(table, torch.tensor([7]), torch.tensor([0]), 6, 9, point=False)


def test_spec_dict_errors() -> None:
    d = make_spec().to_dict()
    with pytest.raises(ModelSpecError, match="unknown keys \\['colour'\\]"):
        ModelSpec.from_dict({**d, "colour": 1})
    d.pop("stats")
    with pytest.raises(ModelSpecError, match="lacks keys \\['stats'\\]"):
        ModelSpec.from_dict(d)


def test_option_and_build_errors() -> None:
    with pytest.raises(ModelSpecError, match="unknown option\\(s\\) \\['widht'\\]"):
        build_model(make_spec("unet", options={"widht": 8}))
    with pytest.raises(ModelSpecError, match="normalization='percentile'"):
        build_model(make_spec("mlp", options={"normalization": "percentile"}))
    with pytest.raises(ModelSpecError, match="option backbone='vit'"):
        build_model(make_spec("mixed", options={"backbone": "vit"}))
    with pytest.raises(ModelSpecError, match="'unet' needs gridded data"):
        build_model(make_spec("unet", grid=(6, 1)))
    with pytest.raises(ModelSpecError, match="option hidden=.* must be an int or a list"):
        build_model(make_spec("mlp", options={"hidden": None}))
    with pytest.raises(ModelSpecError, match="needs a ModelSpec"):
        build_model({"name": "mixed"})  # type: ignore[arg-type]
    with pytest.raises(ModelSpecError, match="U-Net needs depth >= 0"):
        build_model(make_spec("unet", options={"depth": -1}))
    with pytest.raises(ModelSpecError, match="ResNet needs n_blocks >= 0"):
        build_model(make_spec("mixed", options={"backbone": "resnet", "n_blocks": -1}))


def test_base_class_has_no_forward() -> None:
    from enspp.models.base import PostProcessor

    with pytest.raises(NotImplementedError, match="PostProcessor does not implement _forward"):
        PostProcessor(make_spec("mixed", options={}))(toy_batch(torch.Generator().manual_seed(13), b=1))


def test_batch_errors() -> None:
    model = build_model(make_spec("mixed"))
    batch = toy_batch(torch.Generator().manual_seed(11), b=2)
    with pytest.raises(ModelSpecError, match="batch lacks key 'x0'"):
        model({k: v for k, v in batch.items() if k != "x0"})
    with pytest.raises(ModelSpecError, match="batch\\['inputs'\\] has shape"):
        model(dict(batch, inputs=batch["inputs"][:, :, :2]))
    with pytest.raises(ModelSpecError, match="batch lacks key 'static'"):
        model({k: v for k, v in batch.items() if k != "static"})
    with pytest.raises(ModelSpecError, match="batch\\['static'\\] has shape"):
        model(dict(batch, static=batch["static"][:, :1]))
    with pytest.raises(StatsError, match="y0 .* out of range"):
        model(dict(batch, y0=torch.tensor([0, 10])))
    point = build_model(make_spec("mlp", grid=(6, 1)))
    with pytest.raises(ModelSpecError, match="point data need H = W = 1"):
        point(batch)
    pbatch = toy_batch(torch.Generator().manual_seed(12), b=2, h=1, w=1, grid=(6, 1))
    with pytest.raises(StatsError, match="station index\\) out of range"):
        point(dict(pbatch, x0=torch.tensor([0, 6])))
    global_point = build_model(make_spec("mlp", grid=(6, 1), options={"normalization": "global"}))
    with pytest.raises(ModelSpecError, match="station index x0 out of range"):
        global_point(dict(pbatch, x0=torch.tensor([0, 6])))
    with pytest.raises(StatsError, match="point data need H = W = 1 per station"):
        Normalizer(
            resolve_stats(make_stats((6, 1)), channels=CHANNELS, targets=("t2m",), target_channels=(0,), grid_shape=(6, 1)),
            point=True,
        ).lookup("channel_mean_local", torch.tensor([0]), torch.tensor([0]), 2, 2)


# ---- the EMOS anchor ------------------------------------------------------------------------
@pytest.mark.parametrize("anchor", ["emos_local", "emos_global", "emos_lagged"])
@pytest.mark.parametrize("name", ["mlp", "unet", "mixed"])
def test_untrained_network_is_its_fitted_emos(name: str, anchor: str) -> None:
    """The head corrects the anchor EMOS: fitted exactly on the training batches, an untrained
    network's distribution equals that of the EMOS model fitted on the same data."""
    from enspp.models.emos import emos_chunk, fit_anchor, fit_emos

    gen = torch.Generator().manual_seed(11)
    train = [toy_batch(gen, b=16, bias=3.0, spread=0.3) for _ in range(4)]
    opts = {**SMALL[name], "anchor": anchor}
    torch.manual_seed(0)
    net = build_model(make_spec(name, options=opts))
    emos = build_model(make_spec(anchor))
    fit_anchor(net, train)
    fit_emos(emos, [emos_chunk(emos, b) for b in train])
    test = toy_batch(torch.Generator().manual_seed(12), b=8, bias=3.0, spread=0.3)
    with torch.no_grad():
        got, want = net(test), emos(test)
        raw = net.raw_loss(test)
        assert net.loss(want, test["target"]) < 0.6 * raw  # the fit did something
    torch.testing.assert_close(got["mu"], want["mu"], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got["sigma"], want["sigma"], rtol=1e-6, atol=1e-6)
    # training moves the network's own layers, never the anchor
    before = {k: v.clone() for k, v in net.anchor.state_dict().items()}
    fit(net, gen, steps=3, lr=0.01, bias=3.0, spread=0.3)
    for k, v in net.anchor.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert all(not p.requires_grad for p in net.anchor.parameters())


def test_anchor_options_and_checkpoints_without_an_anchor() -> None:
    from enspp.models.emos import fit_anchor

    with pytest.raises(ModelSpecError, match="anchor='climate'"):
        build_model(make_spec("mlp", options={"anchor": "climate"}))
    with pytest.raises(ModelSpecError, match="unknown option.*anchor"):
        build_model(make_spec("emos_local", options={"anchor": "raw"}))
    raw = build_model(make_spec("mlp", options={**SMALL["mlp"], "anchor": "raw"}))
    assert raw.anchor is None and fit_anchor(raw, []) is None
    with pytest.raises(ModelSpecError, match=r"static features \['sin_doy', 'cos_doy'\]"):
        build_model(make_spec("mlp", options={"anchor_season": "doy"}))
    # a state dict written before the anchor existed loads; the anchor stays the raw ensemble
    anchored = build_model(make_spec("mlp", options=SMALL["mlp"]))
    old = {k: v for k, v in anchored.state_dict().items() if not k.startswith("anchor.")}
    anchored.load_state_dict(old)
    with torch.no_grad():
        anchored.anchor.params.add_(1.0)  # a fitted anchor is replaced by the untrained one
    anchored.load_state_dict(old)
    assert float(anchored.anchor.params[0].abs().max()) == 0.0


def test_tail_weight_adds_the_tails_twcrps_in_training_only() -> None:
    from enspp.models.losses import twcrps_gaussian

    stats = make_stats(GRID)
    stats["target_mean_local"] = np.full((1, *GRID), 280.0, np.float32)
    stats["target_std_local"] = np.full((1, *GRID), 3.0, np.float32)
    model = build_model(make_spec("mlp", options={**SMALL["mlp"], "tail_weight": 0.5}, stats=stats))
    plain = build_model(make_spec("mlp", options=SMALL["mlp"], stats=stats))
    plain.load_state_dict(model.state_dict())
    batch = toy_batch(torch.Generator().manual_seed(13))
    model.train()
    out = model(batch)
    y = batch["target"]
    tails = sum(twcrps_gaussian(out["mu"], out["sigma"], y, torch.full_like(y, 280.0 + s * 1.6448536 * 3.0),
                                tail=t).mean() for s, t in ((1, "upper"), (-1, "lower"))) / 3.0
    base = plain.loss(out, y)
    torch.testing.assert_close(model.loss(out, y), base + 0.5 * tails, rtol=1e-5, atol=1e-6)
    model.eval()
    torch.testing.assert_close(model.loss(model(batch), y), base, rtol=1e-6, atol=1e-7)
    with pytest.raises(ModelSpecError, match="tail_weight=-1"):
        build_model(make_spec("mlp", options={"tail_weight": -1}))
    with pytest.raises(ModelSpecError, match="needs the gaussian"):
        build_model(make_spec("mlp", options={"tail_weight": 1.0}, distribution="censored_logistic"))
