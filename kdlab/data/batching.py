"""A batch is a dict of tensors cut from a split by sample index."""

from __future__ import annotations

from torch import Tensor

from kdlab.data.base import Split

# A label position nothing is trained or scored on (padding, prompt, a word's later sub-tokens):
# the Hugging Face convention, shared by the data, the tasks and the token-level methods.
IGNORE_INDEX = -100


def cut_batch(split: Split, index: Tensor, prepare=None, augment=None, generator=None) -> dict[str, Tensor]:
    """Samples `index` of a split (in memory, or streamed: read one by one) as a batch: every
    tensor indexed, `x` prepared and augmented."""
    batch = split.rows(index)
    batch["index"] = index
    return finish_batch(batch, prepare, augment, generator)


def finish_batch(batch: dict[str, Tensor], prepare=None, augment=None, generator=None) -> dict[str, Tensor]:
    """`x` of a batch on its device prepared, then augmented with the generator (whole batch)."""
    if "x" in batch:
        x = batch["x"]
        if prepare is not None:
            x = prepare(x)
        if augment is not None:
            x = augment(x, generator)
        batch["x"] = x
    return batch
