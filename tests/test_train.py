"""Training with Lightning: each model beats the raw ensemble on a toy world; runs, resume."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from enspp.models.config import ConfigError, ModelConfig, TrainConfig, load_sections, parse_section
from enspp.models.train import train
from enspp.pipeline.config import PipelineConfig
from enspp.pipeline.stats import NormStats

NY, NX, K = 8, 16, 5
BIAS, NOISE = 1.0, 0.3  # members: truth + BIAS + NOISE * eps (biased, under-dispersed)


def toy_stats(channels=("t2m@48h",), targets=("t2m",)) -> NormStats:
    c, t = len(channels), len(targets)
    z = lambda n: np.zeros((n, NY, NX), np.float32)  # noqa: E731
    o = lambda n: np.ones((n, NY, NX), np.float32)  # noqa: E731
    return NormStats(channels=tuple(channels), targets=tuple(targets),
                     channel_mean=np.zeros(c, np.float32), channel_std=np.ones(c, np.float32),
                     channel_mean_local=z(c), channel_std_local=o(c),
                     target_mean=np.zeros(t, np.float32), target_std=np.ones(t, np.float32),
                     target_mean_local=z(t), target_std_local=o(t),
                     train_start="2020-01-01", train_end="2020-01-31", source_hash="toy")


class ToyDataset(Dataset):
    """Truth ~ N(0, 1) per point; K members = truth + bias + small noise."""

    def __init__(self, n: int, seed: int) -> None:
        g = np.random.default_rng(seed)
        truth = g.normal(size=(n, 1, NY, NX)).astype(np.float32)
        self.inputs = (truth[:, None] + BIAS + NOISE * g.normal(size=(n, K, 1, NY, NX))).astype(np.float32)
        self.target = truth

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"inputs": torch.from_numpy(self.inputs[i]),
                "static": torch.zeros(2, NY, NX), "target": torch.from_numpy(self.target[i]),
                "init_time": torch.tensor(i, dtype=torch.int64),
                "lead_time": torch.tensor(0, dtype=torch.int64),
                "y0": torch.tensor(0), "x0": torch.tensor(0)}


class ToyDataModule(L.LightningDataModule):
    """The pipeline's DataModule contract on the toy world."""

    channels = ("t2m@48h",)
    targets = ("t2m",)
    target_channels = (0,)
    static_names = ("lsm", "orog")
    n_members = K
    grid_shape = (NY, NX)
    latitude = np.linspace(45.0, 38.0, NY)
    longitude = np.arange(NX, dtype=float)

    def __init__(self, n_train: int = 32, n_val: int = 16) -> None:
        super().__init__()
        self.stats = toy_stats()
        self.n_train, self.n_val = n_train, n_val

    def setup(self, stage: str) -> None:
        self.train_ds, self.val_ds = ToyDataset(self.n_train, 0), ToyDataset(self.n_val, 1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_ds, batch_size=8, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_ds, batch_size=8)


PIPE = PipelineConfig.from_dict({"features": {"variables": ["t2m"], "targets": ["t2m"]}})


def fit(tmp_path: Path, *, name: str = "mixed", epochs: int = 3, run_id: str = "run",
        resume: Path | None = None, lr: float = 0.01, options: dict | None = None, **kw):
    cfg = TrainConfig(max_epochs=epochs, progress_bar=False, run_id=run_id, learning_rate=lr,
                      log_every_n_steps=1, **kw)
    return train(PIPE, ModelConfig(name=name, options=options or {}), cfg, workdir=tmp_path,
                 resume=resume, datamodule=ToyDataModule())


#: small networks keep the default test run fast
SMALL = {"mixed": {"embed_dim": 8, "encoder_hidden": [8], "width": 8, "depth": 1},
         "unet": {}, "mlp": {}, "emos_local": {}, "emos_global": {}}
#: learning rates that converge within a few epochs on the toy world
LR = {"mixed": 0.03, "unet": 0.01, "mlp": 0.05, "emos_local": 0.05, "emos_global": 0.05}


@pytest.mark.parametrize("name", list(SMALL))
def test_each_model_beats_the_raw_ensemble(tmp_path: Path, name: str) -> None:
    result = fit(tmp_path, name=name, epochs=4, options=SMALL[name], lr=LR[name])
    assert result.monitor == "val/crps_gaussian"
    assert result.raw_score is not None and np.isfinite(result.best_score)
    assert result.best_score < 0.8 * result.raw_score, (name, result)


def test_run_directory_layout(tmp_path: Path) -> None:
    result = fit(tmp_path, name="mlp", epochs=2, early_stopping_patience=None)
    assert result.run_dir == tmp_path / "runs" / "run"
    assert result.best_checkpoint == result.run_dir / "checkpoints" / "best.ckpt"
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    rows = list(csv.DictReader(result.metrics_csv.open()))
    assert {"val/crps_gaussian", "val/crps_raw_fair", "val/crps_gaussian/t2m",
            "train/crps_gaussian"} <= set(rows[0])
    assert list((result.run_dir / "logs" / "tensorboard").rglob("events.out.tfevents*"))
    resolved = load_sections(result.run_dir / "config.yaml")
    assert parse_section(resolved, "train", TrainConfig).max_epochs == 2
    assert result.epochs == 2


def test_emos_is_fitted_exactly_without_epochs(tmp_path: Path) -> None:
    """An EMOS run is the exact fit (models.emos.fit_emos) on one pass over the training
    batches, validated once; its checkpoints load and predict like any other."""
    from enspp.models.checkpoint import load_checkpoint
    from enspp.models.emos import emos_chunk, fit_emos

    result = fit(tmp_path, name="emos_local", epochs=50)
    assert result.epochs == 0 and result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    loaded = load_checkpoint(result.best_checkpoint).model
    dm = ToyDataModule()
    dm.setup("fit")
    ref = type(loaded)(loaded.spec)
    fit_emos(ref, [emos_chunk(ref, b) for b in DataLoader(dm.train_ds, batch_size=8)])
    torch.testing.assert_close(loaded.params, ref.params, rtol=1e-5, atol=1e-6)
    val = next(iter(DataLoader(dm.val_ds, batch_size=16)))
    with torch.no_grad():
        assert result.best_score == pytest.approx(float(loaded.loss(loaded(val), val["target"])), rel=1e-5)
    rows = list(csv.DictReader(result.metrics_csv.open()))
    assert {"val/crps_gaussian", "train/crps_gaussian", "val/crps_raw_fair"} <= set(rows[0])
    assert result.best_score < 0.7 * result.raw_score
    again = fit(tmp_path, name="emos_local", epochs=50, resume=result.last_checkpoint)
    assert again.run_dir == result.run_dir and again.best_score == pytest.approx(result.best_score)


def test_network_trains_on_its_fitted_anchor_and_keeps_it_unless_beaten(tmp_path: Path) -> None:
    from enspp.models.checkpoint import load_checkpoint

    opts = {**SMALL["mlp"], "anchor": "emos_local"}
    emos = fit(tmp_path, name="emos_local", run_id="emos")
    good = fit(tmp_path, name="mlp", options=opts, run_id="good", epochs=3, lr=0.01)
    assert good.best_score <= emos.best_score + 1e-6
    anchor = load_checkpoint(good.best_checkpoint).model.anchor
    torch.testing.assert_close(anchor.params, load_checkpoint(emos.best_checkpoint).model.params,
                               rtol=1e-5, atol=1e-6)
    # a learning rate that wrecks every epoch: the best checkpoint is the anchor itself
    bad = fit(tmp_path, name="mlp", options=opts, run_id="bad", epochs=2, lr=50.0)
    assert bad.best_score == pytest.approx(emos.best_score, rel=1e-5)
    net = load_checkpoint(bad.best_checkpoint).model
    assert float(net.out.weight.abs().max()) == 0.0 and float(net.out.bias.abs().max()) == 0.0


def test_resume_continues_the_same_run(tmp_path: Path) -> None:
    kw = dict(name="mixed", options=SMALL["mixed"], early_stopping_patience=None)
    full = fit(tmp_path, epochs=4, run_id="full", **kw)
    half = fit(tmp_path, epochs=2, run_id="half", **kw)
    resumed = fit(tmp_path, epochs=4, run_id="ignored", resume=half.last_checkpoint, **kw)
    assert resumed.run_dir == half.run_dir  # same run continued
    assert not (tmp_path / "runs" / "ignored").exists()
    a = torch.load(full.last_checkpoint, weights_only=True)
    b = torch.load(resumed.last_checkpoint, weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in sa:
        torch.testing.assert_close(sb[i]["exp_avg_sq"], sa[i]["exp_avg_sq"], rtol=0, atol=0)
    assert resumed.metrics_csv.parent.name == "version_1"


def test_resume_with_another_model_is_refused(tmp_path: Path) -> None:
    first = fit(tmp_path, name="emos_global", epochs=1)
    with pytest.raises(ValueError, match="name"):
        fit(tmp_path, name="emos_local", epochs=2, resume=first.last_checkpoint)


def test_config_sections(tmp_path: Path) -> None:
    cfg = tmp_path / "enspp.yaml"
    cfg.write_text("model: {name: unet}\ntrain: {max_epochs: 3, accelerator: cpu}\n"
                   "predict: {quantiles: [0.1, 0.9]}\npipeline: {}\n")
    sections = load_sections(cfg)
    assert parse_section(sections, "model", ModelConfig).name == "unet"
    assert parse_section(sections, "train", TrainConfig).max_epochs == 3
    cfg.write_text("train: {max_epochz: 3}\n")
    with pytest.raises(ConfigError, match=r"train\.max_epochz"):
        parse_section(load_sections(cfg), "train", TrainConfig)


@pytest.mark.parametrize("text, match", [
    ("trian: {}\n", "unknown section 'trian'"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("train: 3\n", "section 'train' must be a mapping"),
    ("train: [\n", "not valid YAML"),
])
def test_bad_config_files(tmp_path: Path, text: str, match: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_sections(cfg)


def test_config_validation() -> None:
    with pytest.raises(FileNotFoundError):
        load_sections("/nonexistent/enspp.yaml")
    with pytest.raises(ValueError, match="strictly increasing"):
        __import__("enspp.models.config").models.config.PredictConfig(quantiles=(0.5, 0.1))
    with pytest.raises(ValueError, match="strictly between"):
        __import__("enspp.models.config").models.config.PredictConfig(quantiles=(0.0, 0.5))
    with pytest.raises(ValueError, match="plain directory name"):
        TrainConfig(run_id="a/b")


@pytest.mark.parametrize("schedule", ["constant", "cosine", "plateau"])
def test_lr_schedules(schedule):
    from types import SimpleNamespace

    from enspp.models.config import TrainConfig
    from enspp.models.lightning_module import PostProcessingModule

    model = torch.nn.Linear(2, 2)
    model.spec = SimpleNamespace(distribution="gaussian", targets=("t2m",))
    cfg = TrainConfig(max_epochs=10, learning_rate=0.1, lr_schedule=schedule, lr_min_factor=0.01,
                      lr_plateau_patience=0, lr_plateau_factor=0.5)
    out = PostProcessingModule(model, train_config=cfg).configure_optimizers()
    if schedule == "constant":  # a bare optimizer at the configured rate, no scheduler
        assert isinstance(out, torch.optim.Optimizer)
        assert out.param_groups[0]["lr"] == pytest.approx(0.1)
        return
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    if schedule == "cosine":
        for _ in range(10):
            opt.step()
            sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.01)  # the floor at max_epochs
    else:
        assert out["lr_scheduler"]["monitor"].startswith("val/")  # validation CRPS, never test
        for _ in range(3):
            sched.step(1.0)  # no improvement: halved each epoch after the first
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 2)


def test_exact_fit_line_says_its_crps_is_normalised() -> None:
    """The exact EMOS fit's summary names what its number is (the training loss: the CRPS
    normalised by each target's training std), as every other training line does."""
    from types import SimpleNamespace

    from enspp.models.train import _fit_words

    words = _fit_words(SimpleNamespace(loss=0.0626, start_loss=0.0627, iterations=16, converged=True))
    assert words == "train CRPS (normalised) 0.0626 (closed-form start 0.0627), 16 Newton iterations"


def test_two_runs_started_in_one_second_get_their_own_directories(tmp_path):
    """Run ids have one-second resolution: a second training started within that second
    (one seed) must not write into the first one's directory."""
    from concurrent.futures import ThreadPoolExecutor

    from enspp.models.train import claim_run_dir

    runs = tmp_path / "runs"
    (runs / "20261207-030000-s0").mkdir(parents=True)
    (runs / "20261207-030000-s0" / "config.yaml").write_text("first run's\n")
    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: claim_run_dir(runs, "20261207-030000-s0"), range(8)))
    assert len(set(dirs)) == 8
    assert runs / "20261207-030000-s0" not in dirs
    assert sorted(d.name for d in dirs) == sorted(f"20261207-030000-s0-{n}" for n in range(2, 10))
    assert all(not any(d.iterdir()) for d in dirs)
    assert (runs / "20261207-030000-s0" / "config.yaml").read_text() == "first run's\n"


def test_a_named_run_holding_another_run_is_refused_and_kept(tmp_path: Path) -> None:
    """``train.run_id: NAME`` re-enters ``runs/NAME`` only for the same run (an equal
    config.yaml) or one with nothing of a run in it yet (an experiment point's fresh
    directory); another run there is refused in one line, its files left byte for byte."""
    from test_store import digest

    from enspp.data.errors import EnsppError
    from enspp.models.train import RunDirError

    first = fit(tmp_path, name="emos_global", epochs=1, run_id="paper")
    before = digest(first.run_dir)
    for name in ("mlp", "emos_local"):
        with pytest.raises(RunDirError, match=r"holds another run \(its config differs\); give "
                                              r"another train.run_id") as e:
            fit(tmp_path, name=name, epochs=1, run_id="paper")
        assert isinstance(e.value, EnsppError) and "\n" not in str(e.value)
        assert str(first.run_dir) in str(e.value) and "nothing was changed" in str(e.value)
        assert digest(first.run_dir) == before
    # checkpoints whose config is gone: another run too
    lost = tmp_path / "runs" / "lost" / "checkpoints"
    lost.mkdir(parents=True)
    (lost / "best.ckpt").write_bytes(b"someone's weights")
    with pytest.raises(RunDirError, match="checkpoints without a config.yaml"):
        fit(tmp_path, name="emos_global", epochs=1, run_id="lost")
    assert (lost / "best.ckpt").read_bytes() == b"someone's weights"
    # the same run again, a resume, and a directory with nothing of a run yet are entered
    again = fit(tmp_path, name="emos_global", epochs=1, run_id="paper")
    assert again.run_dir == first.run_dir and again.best_checkpoint.is_file()
    resumed = fit(tmp_path, name="emos_global", epochs=1, run_id="paper",
                  resume=again.last_checkpoint)
    assert resumed.run_dir == first.run_dir
    point = tmp_path / "runs" / "exp-point"
    point.mkdir()
    (point / "experiment_started.json").write_text("{}")
    assert fit(tmp_path, name="mlp", epochs=1, run_id="exp-point").run_dir == point


@pytest.mark.parametrize("split, line", [
    ({"fractions": [0.8, 0.0, 0.2]},
     "pipeline.split.fractions: [0.8, 0.0, 0.2] leave no validation split: "),
    ({"train": {"start": "2020-01-01", "end": "2020-01-31"}},
     "pipeline.split: no validation period (split.val is not set): "),
])
def test_a_split_without_validation_is_refused_before_training(tmp_path: Path, split, line):
    """Training chooses and scores its checkpoint on validation init times: a split without
    them is one line naming pipeline.split, before anything is read or written, with or
    without early stopping, for a network and an exact EMOS fit alike (not Lightning's
    early-stopping traceback, nor a best.ckpt that was never written scored NaN)."""
    pipe = PipelineConfig.from_dict({"features": {"variables": ["t2m"], "targets": ["t2m"]},
                                     "split": split})
    for name, patience in (("mlp", 5), ("mlp", None), ("emos_local", None)):
        cfg = TrainConfig(max_epochs=1, progress_bar=False, run_id="run",
                          early_stopping_patience=patience)
        with pytest.raises(ConfigError) as e:
            train(pipe, ModelConfig(name=name), cfg, workdir=tmp_path, datamodule=ToyDataModule())
        assert str(e.value).startswith(line) and "\n" not in str(e.value)
        assert "early stopping, best.ckpt" in str(e.value)
    assert not (tmp_path / "runs").exists()

    class NoValidation(ToyDataModule):  # a DataModule of its own without a validation split
        split_init_times = {"train": np.zeros(1, "datetime64[ns]")}

    with pytest.raises(ConfigError, match="pipeline.split: the DataModule has no validation"):
        train(PIPE, ModelConfig(name="mlp"), TrainConfig(max_epochs=1, progress_bar=False),
              workdir=tmp_path, datamodule=NoValidation())


def test_batch_limits_below_one_batch_are_refused_naming_the_key(tmp_path: Path) -> None:
    """A fraction ``limit_train_batches`` / ``limit_val_batches`` leaving less than one batch
    (the toy world: 4 training and 2 validation batches) is one line naming the key, the
    value and the number of batches (not Lightning's MisconfigurationException); a float
    above 1 is refused by the config."""
    with pytest.raises(ConfigError, match=r"^train\.limit_train_batches: 0\.1 of the 4 training "
                       r"batches is less than one batch; give a fraction of at least 0\.25 "):
        fit(tmp_path, name="mlp", epochs=1, limit_train_batches=0.1)
    with pytest.raises(ConfigError, match=r"^train\.limit_val_batches: 0\.2 of the 2 validation "
                       r"batches is less than one batch; give a fraction of at least 0\.5 "):
        fit(tmp_path, name="emos_local", epochs=1, limit_val_batches=0.2)
    assert not (tmp_path / "runs").exists()
    for key in ("limit_train_batches", "limit_val_batches"):
        with pytest.raises(ValueError, match=r"2\.5 is neither a fraction \(at most 1\.0\)"):
            TrainConfig(**{key: 2.5})
        assert TrainConfig(**{key: 3}).model_dump()[key] == 3  # a number of batches
