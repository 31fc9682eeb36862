"""Validation split and model selection (run options ``val_fraction=`` and ``selection=last|best_val``).

Oracle tier: properties of the data stream and of the record, read back from what the engine actually sampled and
evaluated (images that encode their own row index), plus a pure check of the per-seed selection on a vmapped pytree.
Data: a generated MNIST-format dataset in a temporary directory (no real files, no download).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localrules import cli, run
from localrules.config import RunConfig
from localrules.tasks import images
from localrules.train import TrainState

N_TRAIN, N_TEST, BS = 200, 60, 10


def _idx(arr: np.ndarray) -> bytes:
    import struct

    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _images(labels: np.ndarray, first_index: int, rng) -> np.ndarray:
    """One 28×28 image per label: the class's fixed pattern plus noise; pixels (0, 0) and (0, 1) hold the row index
    (index % 256, index // 256) so a sampled batch names the rows it came from."""
    patterns = np.random.default_rng(7).integers(0, 256, (10, 28, 28))
    x = np.clip(patterns[labels] + rng.integers(-30, 31, (len(labels), 28, 28)), 0, 255)
    i = np.arange(first_index, first_index + len(labels))
    x[:, 0, 0], x[:, 0, 1] = i % 256, i // 256
    return x.astype(np.uint8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """MNIST files with N_TRAIN/N_TEST rows. The rows the 10 % split holds out carry the label (c + 1) mod 10 of
    an image of class c: the more the network learns the training rows, the worse its validation loss."""
    tmp_path = tmp_path_factory.mktemp("validation")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCALRULES_OFFLINE", "1")
        mp.setenv("LOCALRULES_CACHE_DIR", str(tmp_path / "cache"))
        yield _write(tmp_path)


def _write(tmp_path) -> str:
    rng = np.random.default_rng(0)
    cls = rng.integers(0, 10, N_TRAIN)
    _, held = images.validation_rows(N_TRAIN, 0.1)
    labels = cls.copy()
    labels[held] = (cls[held] + 1) % 10
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    cls_te = rng.integers(0, 10, N_TEST)
    for name, arr in (("train-images-idx3-ubyte", _images(cls, 0, rng)), ("train-labels-idx1-ubyte", labels),
                      ("t10k-images-idx3-ubyte", _images(cls_te, 1000, rng)), ("t10k-labels-idx1-ubyte", cls_te)):
        (folder / name).write_bytes(_idx(arr))
    return str(tmp_path / "data")


def config(data_dir: str, *tokens: str) -> RunConfig:
    base = ["task=mnist", f"task.data_dir={data_dir}", "arch.hidden=[32]", f"batch_size={BS}", "epochs=3",
            "eval_every=9", "seeds=2", "optimizer.name=sgd", "optimizer.lr=0.05", "timing_steps=0", "progress=false",
            "checkpoint=false"]
    return cli.apply_overrides(RunConfig(), [cli.split_token(t) for t in base + list(tokens)])


def rows_of(x: np.ndarray) -> np.ndarray:
    """Row indices encoded in pixels (0, 0) and (0, 1) of raw uint8 images or unit-normalised ones."""
    x = np.asarray(x, dtype=np.float64)
    if x.max() <= 1.0:
        x = x * 255.0
    p = np.rint(x[:, 0, :2, 0]).astype(int)
    return p[:, 0] + 256 * p[:, 1]


def test_the_held_out_rows_are_never_sampled_for_training_and_every_other_row_is(data_dir):
    """Over three epochs and two seeds the training stream holds exactly the 180 kept rows, each once per epoch;
    the validation batch is exactly the 20 held-out rows."""
    b = run.build(config(data_dir, "val_fraction=0.1"))
    keep, held = images.validation_rows(N_TRAIN, 0.1)
    assert len(held) == 20 and b.task.steps_per_epoch == 18
    np.testing.assert_array_equal(np.sort(rows_of(b.val.x)), held)
    sample = jax.jit(b.program.sample)
    for seed in (0, 1):
        for epoch in range(3):
            seen = np.concatenate([rows_of(sample(b.task.data, seed, epoch * 18 + t).x) for t in range(18)])
            np.testing.assert_array_equal(np.sort(seen), keep)  # each kept row once, no held-out row


def test_standardisation_statistics_come_from_the_training_rows_only(data_dir):
    """task.normalize=standard: the mean and sd that the training batches are standardised with are those of the
    kept rows (solved from two pixels of a batch seen both ways), not of the whole training file."""
    unit = run.build(config(data_dir, "val_fraction=0.1"))
    std = run.build(config(data_dir, "val_fraction=0.1", "task.normalize=standard"))
    xu = np.asarray(unit.program.sample(unit.task.data, 0, 0).x, np.float64).ravel()
    xs = np.asarray(std.program.sample(std.task.data, 0, 0).x, np.float64).ravel()
    i, j = np.argmin(xu), np.argmax(xu)
    sd = (xu[j] - xu[i]) / (xs[j] - xs[i])
    mean = xu[i] - xs[i] * sd
    from localrules.tasks import datasets

    raw, _ = datasets.load("mnist", "train", data_dir=data_dir)
    keep, _ = images.validation_rows(N_TRAIN, 0.1)
    kept = raw[keep].astype(np.float64) / 255.0
    np.testing.assert_allclose([mean, sd], [kept.mean(), kept.std()], rtol=1e-4)
    whole = raw.astype(np.float64) / 255.0
    assert abs(whole.mean() - kept.mean()) > 1e-4  # the test can tell the two apart


def test_select_best_keeps_each_seeds_own_lowest_validation_loss():
    """Per seed: strictly lower loss replaces, a tie or NaN keeps the earlier parameters."""
    def state(value, step):
        params = ({"w": jnp.full((2, 3, 4), value, jnp.float32)},)
        return TrainState(params, (), {"v": jnp.full((2, 5), value, jnp.float32)}, jnp.full((2,), step, jnp.int32),
                          jnp.full((2,), -1, jnp.int32))

    best = run.selection_start(state(0.0, 0))
    best = run.select_best(best, state(1.0, 10), jnp.array([2.0, 1.0]))
    best = run.select_best(best, state(2.0, 20), jnp.array([1.5, 1.0]))        # seed 0 improves, seed 1 ties
    best = run.select_best(best, state(3.0, 30), jnp.array([jnp.nan, 3.0]))    # NaN and worse: both keep
    np.testing.assert_array_equal(best.step, [20, 10])
    np.testing.assert_array_equal(best.val_loss, [1.5, 1.0])
    np.testing.assert_array_equal(best.params[0]["w"][:, 0, 0], [2.0, 1.0])
    np.testing.assert_array_equal(best.rule_state["v"][:, 0], [2.0, 1.0])


def _run(tmp_path, cfg, name="r"):
    return run.execute(cfg, str(tmp_path / name), name, log=lambda *a: None)


def best_val_config(data_dir):
    return dataclasses.replace(config(data_dir, "val_fraction=0.1", "selection=best_val"), checkpoint=True)


@pytest.fixture(scope="module")
def whole(data_dir, tmp_path_factory):
    """The uninterrupted best_val run (2 seeds, 6 evaluations), checkpointing."""
    return _run(tmp_path_factory.mktemp("whole"), best_val_config(data_dir))


def test_best_val_reports_the_test_metrics_at_each_seeds_argmin_validation_loss(whole):
    """With mislabelled held-out rows the validation loss rises while the network learns, so the selected
    evaluation is not the last one; the record's final metrics equal the history's test metrics at the selected
    step (per seed), and the last step's are kept beside them."""
    rec = whole
    sel, hist = rec["selection"], rec["history"]
    assert sel["mode"] == "best_val" and sel["val_examples"] == 20
    trained = [h for h in hist if h["step"] > 0]
    assert len(trained) == 6
    for s in range(2):
        losses = [h["val/loss"][s] for h in trained]
        k = int(np.argmin(losses))
        assert sel["step"][s] == trained[k]["step"]
        assert sel["val_loss"][s] == pytest.approx(losses[k], rel=1e-6)
        assert rec["final"]["acc"][s] == pytest.approx(trained[k]["test/acc"][s], abs=1e-9)
        assert rec["final"]["loss"][s] == pytest.approx(trained[k]["test/loss"][s], rel=1e-5)
        assert sel["last"]["final"]["acc"][s] == pytest.approx(trained[-1]["test/acc"][s], abs=1e-9)
        assert sel["last"]["val_loss"][s] == pytest.approx(trained[-1]["val/loss"][s], rel=1e-6)
    assert max(sel["step"]) < rec["steps"]  # the construction makes last ≠ best
    assert rec["acc_mean"] == pytest.approx(np.mean(rec["final"]["acc"]))
    assert rec["acc_mean"] < sel["last"]["acc_mean"]


def test_a_resumed_run_keeps_the_selection_made_before_the_interruption(data_dir, whole, tmp_path, monkeypatch):
    """Interrupted after the 4th chunk (3 checkpoints on disk) and resumed: the selection made at the 1st
    evaluation survives in the checkpoint and the record equals the uninterrupted run's."""
    cfg = best_val_config(data_dir)

    class Stop(Exception):
        pass

    hits = []

    def stop_at_fourth(site):
        hits.append(site)
        if len(hits) == 4:
            raise Stop

    monkeypatch.setattr(run, "fault_point", stop_at_fourth)
    with pytest.raises(Stop):
        _run(tmp_path, cfg, "cut")
    monkeypatch.setattr(run, "fault_point", lambda site: None)
    resumed = _run(tmp_path, cfg, "cut")
    assert resumed["resumed_from"] == 27
    assert min(whole["selection"]["step"]) < 27  # the selection was made before the cut
    assert resumed["selection"]["step"] == whole["selection"]["step"]
    np.testing.assert_allclose(resumed["selection"]["val_loss"], whole["selection"]["val_loss"], rtol=1e-6)
    np.testing.assert_allclose(resumed["final"]["acc"], whole["final"]["acc"], atol=1e-9)
    np.testing.assert_allclose(resumed["final"]["loss"], whole["final"]["loss"], rtol=1e-5)


@pytest.mark.parametrize("tokens, message", [
    (("val_fraction=0.7",), r"val_fraction=0.7: must be in \(0, 0.5\]"),
    (("val_fraction=-0.1",), r"val_fraction=-0.1: must be in \(0, 0.5\]"),
    (("selection=best",), r"selection='best': choose last or best_val"),
    (("selection=best_val",), r"selection=best_val needs a validation split: add val_fraction=0.1"),
    (("val_fraction=0.1", "task=prototypes"), r"task 'prototypes' has no fixed training set"),
    (("val_fraction=0.1", "task=nursery"), r"task 'nursery' is a curriculum"),
])
def test_bad_validation_options_are_refused_with_one_line_naming_the_fix(data_dir, tokens, message):
    cfg = config(data_dir, *tokens) if not any(t.startswith("task=") for t in tokens) else \
        cli.apply_overrides(RunConfig(), [cli.split_token(t) for t in tokens + ("timing_steps=0",)])
    with pytest.raises(ValueError, match=message) as e:
        run.build(cfg)
    assert "\n" not in str(e.value)


def test_runs_without_a_split_keep_their_identity_so_old_run_ids_and_checkpoints_stay_valid(data_dir):
    plain = run.identity(run.config_dict(config(data_dir)))
    assert "val_fraction" not in plain and "selection" not in plain
    split = run.identity(run.config_dict(config(data_dir, "val_fraction=0.1", "selection=best_val")))
    assert split["val_fraction"] == 0.1 and split["selection"] == "best_val"
