"""The step benchmark's cached-teacher step reads exactly the teacher's logits on the bench
data, and the epoch benchmark trains with the checkpoint/eval cadence it reports on."""

from __future__ import annotations

import numpy as np
import torch

from kdlab.bench import epoch_overhead, step_overhead


def test_the_bench_cache_holds_the_teachers_logits(tmp_path):
    s = step_overhead.BenchSetup(teacher="resnet8", student="resnet8", steps=2, batch_size=8, num_classes=10)
    cache = step_overhead.teacher_cache(s, str(tmp_path / "c"))
    teacher, _ = step_overhead._models(s)
    x = step_overhead._data(s).train["x"]
    with torch.inference_mode():
        expected = teacher(x)
    assert torch.equal(cache.teacher_outputs({"index": torch.arange(len(x))}).logits, expected)
    assert np.asarray(cache.cache.arrays["logits"]).shape == (16, 10)


def test_the_epoch_bench_validates_every_n_epochs(monkeypatch):
    s = epoch_overhead.EpochSetup(model="resnet8", image=8, num_classes=4, batch_size=4, steps=2, val=8, epochs=4)
    validated = []
    evaluate = epoch_overhead.Trainer.evaluate

    def counting(self, model, split):
        validated.append(len(split))
        return evaluate(self, model, split)

    monkeypatch.setattr(epoch_overhead.Trainer, "evaluate", counting)
    res = epoch_overhead.one_run(s, every=2)
    assert validated == [8, 8, 8, 8]  # epochs 2 and 4, then the final test on the last and on the best weights
    assert 0 < res["steps"] < res["wall"]


def test_the_fast_step_bench_times_each_setting_as_named():
    """Each setting's trainer runs what its row says (compiled module, NHWC weights, bf16
    autocast), and every ratio is taken against the eager float32 step of the same round."""
    from kdlab.bench import fast_step

    s = step_overhead.BenchSetup(teacher="resnet8", student="resnet8", steps=2, batch_size=4, image=8, num_classes=4,
                                 repeats=2)
    ready = {n: fast_step.ready(s, fast_step.SETTINGS[n]) for n in ("eager float32", "channels_last", "bf16 autocast")}
    conv = {n: next(m for m in r.trainer.student.modules() if isinstance(m, torch.nn.Conv2d)) for n, r in ready.items()}
    nhwc = torch.channels_last
    assert [conv[n].weight.is_contiguous(memory_format=nhwc) for n in conv] == [False, True, False]
    with ready["bf16 autocast"].trainer.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with ready["eager float32"].trainer.autocast():
        assert not torch.is_autocast_enabled("cpu")
    r = fast_step.run(s, settings=["channels_last"], log=lambda *a: None)
    assert list(r) == ["eager float32", "channels_last"]
    assert r["eager float32"]["per_round"] == [1.0, 1.0] and len(r["channels_last"]["per_round"]) == 2
