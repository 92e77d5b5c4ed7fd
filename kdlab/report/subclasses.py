"""Which natural subclasses each learned subclass captures: a table of counts, learned
subclass (the argmax over all C·s subclass logits) × fine label, on a split with `fine`."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from kdlab.errors import KdlabError


@torch.no_grad()
def subclass_counts(model: nn.Module, split, prepare=None, batch_size: int = 1024) -> Tensor:
    """(C·s, F) counts: rows learned subclasses, columns fine labels."""
    if not hasattr(model, "subclass_forward"):
        raise KdlabError("this model has no subclass head; train one with `model: {name: subclass, ...}`")
    if "fine" not in split.head(1):
        raise KdlabError("the data has no finer labels (`fine` in its splits), e.g. use dataset digits_coarse")
    was = model.training
    model.eval()
    n_sub = model.num_classes * model.subclasses
    device = next(model.parameters(), torch.empty(0)).device
    subs, fines = [], []
    for batch in split.chunks(batch_size):  # in memory or streamed alike
        x = batch["x"].to(device)
        subs.append(model.subclass_forward(prepare(x) if prepare is not None else x).argmax(1).cpu())
        fines.append(batch["fine"].long().cpu())
    model.train(was)
    sub, fine = torch.cat(subs), torch.cat(fines)
    n_fine = int(fine.max()) + 1
    return torch.bincount(sub * n_fine + fine, minlength=n_sub * n_fine).reshape(n_sub, n_fine)


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
