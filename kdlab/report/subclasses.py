"""Which natural subclasses each learned subclass captures: a table of counts, learned
subclass (the argmax over all C·s subclass logits) × fine label, on a split with `fine`."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from kdlab.engine.loader import TensorLoader
from kdlab.errors import KdlabError


@torch.no_grad()
def subclass_counts(model: nn.Module, split, prepare=None, batch_size: int = 1024) -> Tensor:
    """(C·s, F) counts: rows learned subclasses, columns fine labels."""
    if not hasattr(model, "subclass_forward"):
        raise KdlabError("this model has no subclass head; train one with `model: {name: subclass, ...}`")
    if "fine" not in split.tensors:
        raise KdlabError("the data has no finer labels (`fine` in its splits), e.g. use dataset digits_coarse")
    was = model.training
    model.eval()
    n_sub = model.num_classes * model.subclasses
    n_fine = int(split["fine"].max()) + 1
    counts = torch.zeros(n_sub, n_fine, dtype=torch.long)
    for batch in TensorLoader(split, batch_size, prepare=prepare):
        sub = model.subclass_forward(batch["x"]).argmax(1).cpu()
        idx = sub * n_fine + batch["fine"].long().cpu()
        counts += torch.bincount(idx, minlength=n_sub * n_fine).reshape(n_sub, n_fine)
    model.train(was)
    return counts


def purity(counts: Tensor) -> float:
    """Share of examples whose learned subclass' majority fine label is their own (in %)."""
    total = int(counts.sum())
    return 100.0 * int(counts.max(1).values.sum()) / max(total, 1)


def counts_rows(counts: Tensor, subclasses: int, fine_names: Optional[list[str]] = None):
    """Header and rows for a table; row label `c.k` is subclass k of class c."""
    n_fine = counts.shape[1]
    names = fine_names or [str(i) for i in range(n_fine)]
    header = ["subclass", *names, "total", "majority"]
    rows = []
    for i, row in enumerate(counts.tolist()):
        total = sum(row)
        major = names[max(range(n_fine), key=lambda j: row[j])] if total else "–"
        rows.append([f"{i // subclasses}.{i % subclasses}", *[str(v) if v else "·" for v in row], str(total), major])
    return header, rows
