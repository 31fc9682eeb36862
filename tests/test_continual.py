"""Classic continual-learning curricula (tasks/continual.py): context splitting, permutations, rotations, label
mapping per scenario, GEM's reference metrics, and tiny end-to-end runs on generated IDX files (never downloads)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localrules import cli
from localrules.config import RunConfig
from localrules.curriculum import gem_metrics
from localrules.tasks import continual as C
from localrules.tasks import datasets as ds

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
SPLIT = C.PROTOCOLS["split_mnist"]
PERM = C.PROTOCOLS["permuted_mnist"]


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALRULES_OFFLINE", "1")
    monkeypatch.setenv("LOCALRULES_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LOCALRULES_DATA_DIR", raising=False)
    ds.clear_cache()
    yield
    ds.clear_cache()


def _idx(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_mnist(root: Path, n_train=400, n_test=100, seed=0) -> Path:
    """A learnable fake MNIST in the real IDX format: a fixed random prototype per digit plus noise."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 256, (10, 28, 28))
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10
        x = np.clip(protos[y] + rng.normal(0, 30, (n, 28, 28)), 0, 255)
        (root / "mnist").mkdir(parents=True, exist_ok=True)
        (root / "mnist" / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(x), mtime=0))
        (root / "mnist" / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(y), mtime=0))
    return root


def run_config(*tokens: str) -> RunConfig:
    base = ["arch.hidden=[16]", "batch_size=8", "timing_steps=0", "progress=false", "checkpoint=false"]
    return cli.apply_overrides(RunConfig(), [cli.split_token(t) for t in base + list(tokens)])


# ------------------------------------------------------------------------------------------ contexts and labels


def test_split_contexts_are_consecutive_class_groups_and_bad_counts_name_the_fix():
    assert C.split_classes(10, 5) == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    groups = C.split_classes(100, 20)
    assert groups[0] == (0, 1, 2, 3, 4) and groups[-1] == (95, 96, 97, 98, 99)
    with pytest.raises(ValueError, match=r"task.contexts=3: must divide the 10 classes \(e.g. 2, 5, 10\)"):
        C.split_classes(10, 3)


def test_context_subsets_hold_only_their_classes_and_a_fixed_random_subset():
    y = np.array([0, 1, 2, 3, 1, 0, 2, 9, 1])
    np.testing.assert_array_equal(C.context_subset(y, (0, 1), 0, 0, 0), [0, 1, 4, 5, 8])
    sub = C.context_subset(y, (0, 1), 3, seed=7, k=0)
    assert sub.size == 3 and set(sub) <= {0, 1, 4, 5, 8} and np.all(np.diff(sub) > 0)
    np.testing.assert_array_equal(sub, C.context_subset(y, (0, 1), 3, seed=7, k=0))
    draws = {tuple(C.context_subset(y, (0, 1), 3, seed=s, k=0)) for s in range(10)}
    assert len(draws) > 1  # the seed matters
    with pytest.raises(ValueError, match="train_per_context=6: context 1 has only 5 examples"):
        C.context_subset(y, (0, 1), 6, 0, 0)


def test_split_label_mapping_per_scenario():
    """task: head ctx_k, labels 0/1; domain: one 2-way head `within`; class: the dataset's 10-way head, the digit."""
    heads, head_of, lab = C.label_tables(SPLIT, "task", 5)
    assert heads.names == ("ctx0", "ctx1", "ctx2", "ctx3", "ctx4") and heads.sizes == (2,) * 5
    assert head_of == [0, 1, 2, 3, 4]
    assert lab[2].tolist() == [-1, -1, -1, -1, 0, 1, -1, -1, -1, -1]  # context 3 is digits 4/5
    heads, head_of, lab = C.label_tables(SPLIT, "domain", 5)
    assert heads == (("within",), (2,)) and head_of == [0] * 5
    assert lab[4].tolist() == [-1] * 8 + [0, 1]
    heads, head_of, lab = C.label_tables(SPLIT, "class", 5)
    assert heads == (("digit",), (10,)) and head_of == [0] * 5
    assert lab[1].tolist() == [-1, -1, 2, 3, -1, -1, -1, -1, -1, -1]
    fashion = C.label_tables(C.PROTOCOLS["split_fashion_mnist"], "class", 5)[0]
    assert fashion == (("fashion",), (10,))
    with pytest.raises(ValueError, match="task.scenario='clas': choose one of task, domain, class"):
        C.label_tables(SPLIT, "clas", 5)


def test_permuted_label_mapping_per_scenario():
    """Permuted contexts hold every digit: domain = the shared `digit` head, class = 10k + d over 10T units."""
    heads, _, lab = C.label_tables(PERM, "domain", 3)
    assert heads == (("digit",), (10,)) and (lab == np.arange(10)).all()
    heads, _, lab = C.label_tables(PERM, "class", 3)
    assert heads == (("digitx3",), (30,))
    assert lab[2].tolist() == list(range(20, 30))
    heads, head_of, lab = C.label_tables(PERM, "task", 3)
    assert heads.sizes == (10, 10, 10) and head_of == [0, 1, 2] and (lab == np.arange(10)).all()


# ------------------------------------------------------------------------------------------ pixel maps


def test_padding_then_permuting_all_1024_pixels():
    img = np.arange(1, 28 * 28 + 1).reshape(1, 28, 28, 1).astype(np.int32)
    pad = C.pad_map((28, 28), 32)
    np.testing.assert_array_equal(C.apply_map(img, pad, (32, 32)), np.pad(img, ((0, 0), (2, 2), (2, 2), (0, 0))))
    maps = C.permutation_maps(4, 1024, seed=3, base=pad)
    assert maps.shape == (4, 1024)
    for m in maps:  # every canvas position (padding included) is moved: 784 image pixels + 240 zeros
        assert np.sum(m == -1) == 240 and sorted(m[m >= 0].tolist()) == list(range(784))
        out = C.apply_map(img, m, (32, 32))
        assert sorted(out.ravel().tolist()) == [0] * 240 + list(range(1, 785))
    assert len({m.tobytes() for m in maps}) == 4  # distinct contexts
    np.testing.assert_array_equal(maps, C.permutation_maps(4, 1024, seed=3, base=pad))
    assert not np.array_equal(maps, C.permutation_maps(4, 1024, seed=4, base=pad))


def test_the_jax_and_numpy_map_agree():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    m = C.permutation_maps(1, 1024, 0, C.pad_map((28, 28), 32))[0]
    np.testing.assert_array_equal(np.asarray(C.apply_map(jnp.asarray(x), jnp.asarray(m), (32, 32))),
                                  C.apply_map(x, m, (32, 32)))


def test_rotation_is_nearest_neighbour_about_the_centre_like_pil():
    img = np.arange(28 * 28).reshape(28, 28)
    rot = lambda a: C.apply_map(img[None, :, :, None], C.rotation_map((28, 28), a), (28, 28))[0, :, :, 0]  # noqa
    np.testing.assert_array_equal(rot(0.0), img)
    np.testing.assert_array_equal(rot(90.0), np.rot90(img))  # counter-clockwise
    np.testing.assert_array_equal(rot(180.0), np.rot90(img, 2))
    Image = pytest.importorskip("PIL.Image")
    u8 = np.random.default_rng(1).integers(1, 256, (28, 28), dtype=np.uint8)
    for a in (5.1, 37.3, 123.4, 171.9):  # GEM rotates with PIL's Image.rotate(angle) (nearest, black fill)
        ref = np.asarray(Image.fromarray(u8, mode="L").rotate(a))
        out = C.apply_map(u8[None, :, :, None], C.rotation_map((28, 28), a), (28, 28))[0, :, :, 0]
        np.testing.assert_array_equal(out, ref)


def test_gem_rotation_angles_fall_one_per_bin():
    a = C.rotation_angles(20, 180.0, seed=0)
    k = np.arange(20)
    assert np.all(a >= 9 * k) and np.all(a < 9 * (k + 1))
    assert not np.allclose(a, C.rotation_angles(20, 180.0, seed=1))


def test_gem_reference_divides_by_t_instead_of_t_minus_one():
    R = np.array([[0.9, 0.2, 0.1], [0.6, 0.8, 0.3], [0.5, 0.7, 0.9]])
    b = np.array([0.1, 0.1, 0.2])
    ref, paper = C.gem_reference(R, b), gem_metrics(R, b)
    assert np.isclose(ref["ACC"], paper["ACC"])
    assert np.isclose(ref["BWT"], ((0.5 - 0.9) + (0.7 - 0.8)) / 3)
    assert np.isclose(ref["FWT"], ((0.2 - 0.1) + (0.3 - 0.2)) / 3)
    assert np.isclose(ref["BWT"] * 3 / 2, paper["BWT"]) and np.isclose(ref["FWT"] * 3 / 2, paper["FWT"])


# ------------------------------------------------------------------------------------------ stages on files


def test_stages_train_and_test_only_their_context_on_its_head(tmp_path):
    """Task-IL Split-MNIST on generated files: batches of context k carry digits 2k/2k+1 as 0/1 in head ctx_k only;
    its test is exactly the test digits of that pair; budget = iterations × batch."""
    root = write_mnist(tmp_path / "data")
    cfg = run_config("task=split_mnist", f"task.data_dir={root}", "task.scenario=task", "task.iterations=7").task
    stages, tests, extra = C.plan_for(SPLIT)(cfg, 8)
    assert [s.name for s in stages] == ["0/1", "2/3", "4/5", "6/7", "8/9"] and tests == stages and extra == {}
    _, yte = ds.load("mnist", "test", data_dir=root)
    for k, st in enumerate(stages):
        assert st.budget == 56 and st.threshold == 2.0 and st.chance == 0.5
        task = st.task
        ctx = task.context(task.data, jax.random.PRNGKey(0), 0)
        b = task.sample(task.data, ctx, jax.random.PRNGKey(1), jnp.int32(3))
        y = np.asarray(b.y)
        assert b.x.shape == (8, 28, 28, 1) and float(b.x.min()) >= 0.0 and float(b.x.max()) <= 1.0
        assert set(y[:, k].tolist()) <= {0, 1} and (np.delete(y, k, axis=1) == -1).all()
        ty = np.asarray(task.test.y)
        assert ty.shape == (int(np.isin(yte, [2 * k, 2 * k + 1]).sum()), 5)
        np.testing.assert_array_equal(ty[:, k], yte[np.isin(yte, [2 * k, 2 * k + 1])] - 2 * k)


def test_an_epoch_visits_every_example_of_the_context_once(tmp_path):
    root = write_mnist(tmp_path / "data", n_train=80)
    cfg = run_config("task=gem_rotated_mnist", f"task.data_dir={root}", "task.contexts=2",
                     "task.train_per_context=40").task
    stages, _, _ = C.plan_for(C.PROTOCOLS["gem_rotated_mnist"])(cfg, 8)
    task = stages[1].task
    assert stages[1].budget == 40  # iterations=0: one pass over the 40 examples
    ctx = task.context(task.data, jax.random.PRNGKey(0), 0)
    xs = np.concatenate([np.asarray(task.sample(task.data, ctx, jax.random.PRNGKey(0), jnp.int32(t)).x)
                         for t in range(5)])
    x_all, _ = ds.load("mnist", "train", data_dir=root)
    idx = C.context_subset(np.arange(80) % 10, tuple(range(10)), 40, 0, 1)
    angle = C.rotation_angles(2, 180.0, 0)[1]
    want = C.apply_map(x_all[idx], C.rotation_map((28, 28), angle), (28, 28))
    got = np.round(xs * 255).astype(np.uint8)
    assert sorted(r.tobytes() for r in got.reshape(40, -1)) == sorted(r.tobytes() for r in want.reshape(40, -1))


def test_joint_order_is_one_mixed_stage_scored_on_every_context(tmp_path):
    root = write_mnist(tmp_path / "data")
    cfg = run_config("task=permuted_mnist", f"task.data_dir={root}", "task.contexts=3", "task.iterations=4",
                     "task.order=joint", "task.scenario=class").task
    stages, tests, _ = C.plan_for(PERM)(cfg, 8)
    assert [s.name for s in stages] == ["joint"] and stages[0].budget == 3 * 32
    assert [t.name for t in tests] == ["perm1", "perm2", "perm3"]
    assert stages[0].task.input_shape == (32, 32, 1) and stages[0].task.heads == (("digitx3",), (30,))
    ty = np.asarray(tests[2].task.test.y)[:, 0]
    assert ty.min() >= 20 and ty.max() <= 29  # context 3's digits are classes 20..29


def test_offline_without_files_stops_with_the_loaders_error(tmp_path, capsys):
    from localrules import sweep

    rc = sweep.main(["task=split_mnist", f"out={tmp_path / 'runs'}", "progress=false"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert "dataset 'mnist' (MNIST), split 'train', was not found and downloads are disabled" in err


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_split_fashion_mnist_uses_the_debian_files_offline():
    cfg = run_config("task=split_fashion_mnist", "task.iterations=1").task
    stages, _, _ = C.plan_for(C.PROTOCOLS["split_fashion_mnist"])(cfg, 128)
    assert [np.asarray(s.task.test.y).shape[0] for s in stages] == [2000] * 5  # 1,000 test images per class
    assert [int(s.task.data[2].size) for s in stages] == [12000] * 5


# ------------------------------------------------------------------------------------------ end to end


def test_tiny_run_end_to_end_gives_r_matrix_metrics_and_gem_reference(tmp_path):
    """Two class-IL contexts on generated files through the lab's runner: a 2×2 R matrix per seed, exact budgets
    (6 steps, not rounded to the 64-step chunk), the paper's metrics and GEM's T-denominator values."""
    from localrules.tasks import TASKS

    root = write_mnist(tmp_path / "data")
    cfg = run_config("task=split_mnist", f"task.data_dir={root}", "task.contexts=2", "task.iterations=6", "seeds=2",
                     "optimizer.lr=0.01")
    rec = TASKS["split_mnist"].runner(cfg, str(tmp_path / "run"), "rid", log=lambda *a: None)
    s = rec["curriculum"]
    R = np.asarray(s["R_per_seed"])
    assert R.shape == (2, 2, 2) and s["stages"] == ["0-4", "5-9"]
    assert [p["samples_trained"] for p in s["per_stage"]] == [48, 48]
    assert rec["task_instance"] == "split_mnist/class/sequential" and s["scenario"] == "class"
    for seed in range(2):
        m = gem_metrics(R[:, :, seed], np.asarray(s["init_per_seed"])[:, seed])
        assert np.isclose(m["BWT"], R[1, 0, seed] - R[0, 0, seed])
    ref = s["gem_reference"]
    assert np.isclose(ref["BWT"], s["BWT"] / 2) and np.isclose(ref["FWT"], s["FWT"] / 2)
    assert np.isclose(ref["ACC"], s["ACC"])
    assert R[0, 0].mean() > 0.5  # 48 samples of 5 noisy prototypes: well above the 0.1 of guessing
