"""`kdlab bench lm-loss`: chunked vs naive token-level divergence, each case in a subprocess;
the memory figure sees what the naive loss keeps and the chunked one does not."""

from __future__ import annotations

import pytest

from kdlab.bench.lm_loss import LossBenchSetup, run
from kdlab.cli.main import main


@pytest.mark.slow
def test_chunked_loss_needs_far_less_memory_than_naive():
    # 4 x 128 tokens x 32k vocabulary: 62.5 MiB of logits per model. The naive JSD keeps about
    # nine logit-sized tensors alive at its peak; the chunked one the gradient plus a chunk's.
    (row,) = run(LossBenchSetup(batch=4, tokens=128, vocab=32000, repeats=1, divergences=["jsd"]), log=lambda *_: None)
    assert row["divergence"] == "jsd" and row["naive_s"] > 0 and row["chunked_s"] > 0
    logits = 4 * 128 * 32000 * 4
    assert row["naive_bytes"] > 4 * logits
    assert row["chunked_bytes"] < 0.5 * row["naive_bytes"]


def test_unknown_divergence_or_bad_size_exits_2(capsys):
    assert main(["bench", "lm-loss", "--divergences", "fkl,nope"]) == 2
    assert "unknown divergence(s) nope" in capsys.readouterr().err
    assert main(["bench", "lm-loss", "--vocab", "0"]) == 2
    assert "--vocab must be at least 1" in capsys.readouterr().err
