"""The curriculum's continual-learning metrics on a hand-made R matrix (GEM formulas with T−1 denominators), and
the evaluation schedule in samples."""

import numpy as np

from localrules.curriculum import chunking, crossed_mark, gem_metrics, kappa


def test_gem_metrics_use_the_papers_t_minus_one_denominators():
    """ACC = mean of the last row; BWT = Σ_{j<T}(R_Tj − R_jj)/(T−1); FWT = Σ_{j≥2}(R_{j−1,j} − b_j)/(T−1).
    GEM's reference code divides by T instead: the test pins the paper's version."""
    R = np.array([[0.9, 0.2, 0.1],
                  [0.6, 0.8, 0.3],
                  [0.5, 0.7, 0.9]])
    b = np.array([0.1, 0.1, 0.2])
    m = gem_metrics(R, b)
    assert np.isclose(m["ACC"], (0.5 + 0.7 + 0.9) / 3)
    assert np.isclose(m["BWT"], ((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert np.isclose(m["FWT"], ((0.2 - 0.1) + (0.3 - 0.2)) / 2)
    assert not np.isclose(m["BWT"], ((0.5 - 0.9) + (0.7 - 0.8)) / 3)  # the T-denominator variant
    assert np.isclose(m["forgetting"], ((0.9 - 0.5) + (0.8 - 0.7)) / 2)


def test_kappa_is_zero_at_chance_and_one_at_perfect():
    assert np.allclose(kappa([0.25, 1.0], 0.25), [0.0, 1.0])


def test_evaluations_fall_at_1024_2048_4096_8192_then_every_8192_samples():
    """The first chunk boundary at or after each mark triggers an evaluation, and nothing else does."""
    marks = [m for m in range(0, 40_000, 512) if crossed_mark(m, m + 512)]
    assert [m + 512 for m in marks] == [1024, 2048, 4096, 8192, 16384, 24576, 32768]


def test_a_stage_uses_two_chunk_lengths_whatever_its_budget():
    """Small chunks (≈512 samples) during the first 8,192 samples, big segments (≈8,192, a whole number of small
    chunks, run as repeated calls of the one compiled small chunk) after; the budget is rounded down to whole
    segments."""
    small, big, window, last = chunking(500_000, 128)
    assert (small, big, window) == (4, 64, 64)
    assert last * 128 <= 500_000 and (last - window) % big == 0 and big % small == 0
