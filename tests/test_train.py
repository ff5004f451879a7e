"""Training on shakespeare: loss goes down in every precision, divergence is a result."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.data import Batches, load_corpus, split_corpus
from models.train import train
from tests.conftest import debug_config


@pytest.fixture(scope="module")
def runs(shakespeare):
    """The same 200-step run (width 64, depth 2) in each precision."""
    return {
        precision: train(
            debug_config(
                shakespeare, precision=precision, steps=200, batch_size=16, eval_interval=50
            )
        )
        for precision in ("fp8", "bf16", "fp32")
    }


def test_fp8_lowers_eval_loss_by_a_nat(runs):
    fp8 = runs["fp8"]
    assert fp8.status == "completed" and fp8.steps == 200
    assert [p.step for p in fp8.curve] == [50, 100, 150, 200]
    first_train_loss = math.log(256)  # what an untrained model scores, about
    assert fp8.curve[0].train_loss < first_train_loss + 1.0
    assert fp8.final_eval_loss < first_train_loss - 1.0
    assert fp8.curve[-1].eval_loss < fp8.curve[0].eval_loss - 0.3


def test_precisions_agree_within_5_percent(runs):
    losses = {p: r.final_eval_loss for p, r in runs.items()}
    assert max(losses.values()) / min(losses.values()) < 1.05, losses


def test_metric_points_are_complete(runs):
    for point in runs["bf16"].curve:
        assert point.tokens == point.step * 16 * 64
        assert point.tokens_per_s > 0 and point.time_s > 0
        assert math.isfinite(point.train_loss) and math.isfinite(point.eval_loss)


def test_huge_lr_diverges_with_its_curve(shakespeare):
    seen = []
    result = train(
        debug_config(shakespeare, lr=1e4, steps=200, eval_interval=10, batch_size=8),
        report=seen.append,
    )
    assert result.status == "diverged"
    assert result.steps < 200  # stopped early, no exception
    assert result.curve == seen and len(seen) >= 1
    last = seen[-1]
    assert not math.isfinite(last.train_loss) or last.train_loss > 1.5 * math.log(256)


def test_same_seed_same_run(shakespeare):
    config = debug_config(shakespeare, steps=20, eval_interval=10, batch_size=4, precision="fp32")
    a, b = train(config), train(config)
    assert [p.train_loss for p in a.curve] == [p.train_loss for p in b.curve]
    other = train(config.model_copy(update={"seed": 1}))
    assert other.curve[-1].train_loss != a.curve[-1].train_loss


def test_split_and_batches_are_deterministic(shakespeare):
    train_tokens, val_tokens = split_corpus(shakespeare)
    total = len(load_corpus(shakespeare))
    assert 0.08 < len(val_tokens) / total < 0.12
    x1, y1 = Batches(train_tokens, batch_size=4, seq_len=32, seed=7).next()
    x2, _ = Batches(train_tokens, batch_size=4, seq_len=32, seed=7).next()
    assert x1.equal(x2) and x1[:, 1:].equal(y1[:, :-1])


def test_stdlib_corpus_is_python_source():
    tokens = load_corpus("stdlib")
    assert len(tokens) > 1_000_000
    text = bytes(tokens[:200_000].tolist()).decode("utf-8", errors="replace")
    assert "def " in text and "import " in text
    assert np.array_equal(split_corpus("stdlib")[0][:100], split_corpus("stdlib")[0][:100])
