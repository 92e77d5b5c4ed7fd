"""The LM cache benchmark's caches hold what the teacher says (top-k: its k largest logits and
the tail's log-mass; sampled: ids it gives mass to), and their size is what the layout implies."""

import numpy as np
import torch

from kdlab.bench import lm_cache
from kdlab.engine.module import teacher_outputs
from kdlab.knowledge.sparse_logits import SPARSE
from kdlab.tasks.base import get_task


def test_the_bench_caches_hold_the_teachers_distribution(tmp_path):
    s = lm_cache.LMCacheSetup(vocab=64, tokens=8, batch_size=2, steps=2, teacher={"n_layer": 1, "n_embd": 16, "n_head": 2},
                              sizes=(4,))
    data = lm_cache._data(s)
    teacher = lm_cache._gpt2(s, s.teacher, data, "teacher").eval()
    logits = teacher_outputs(get_task(data), teacher, None, dict(data.train.tensors)).logits
    batch = {"index": torch.arange(4)}
    top = lm_cache.build_cache(s, str(tmp_path / "t"), "topk", 4).teacher_outputs(batch).extras[SPARSE]
    values, _ = logits.topk(4, -1)
    assert torch.equal(top.values, values)
    assert torch.allclose(torch.logaddexp(top.values.logsumexp(-1), top.rest), logits.logsumexp(-1), atol=1e-5)
    drawn = lm_cache.build_cache(s, str(tmp_path / "s"), "sampled", 4).teacher_outputs(batch).extras[SPARSE]
    p = torch.softmax(logits, -1)
    assert bool((p.gather(-1, drawn.ids.long()) > 0).all()) and drawn.ids.shape == (4, 8, 4)
    # Per token: k float32 values + k int32 ids + one float32 (top-k); k ids + one float32 (sampled).
    (row_t, row_s) = (sum(np.load(f).nbytes for f in (tmp_path / d).glob("*.npy")) / (4 * 8) for d in ("t", "s"))
    assert (row_t, row_s) == (4 * 8 + 4, 4 * 4 + 4)
