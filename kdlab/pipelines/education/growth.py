"""Student growth: a zoo student run up to one of its stages, with a temporary
teaching-reference (TR) head over the classes seen so far.

`GradeModel` wraps the plain student (all its stages exist from the start; later stages
are simply not run or optimised yet). Logit column j is class `columns[j]`: the classes
seen so far (group order) for a TR head, all classes (class-id order) for the student's own
head in the last grade, so the final weights are exactly the plain student's.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from kdlab.errors import KdlabError


class TRHead(nn.Module):
    """Teaching reference: 1x1 conv to the final width -> BN -> average pool -> linear. The
    pool is global (`pool="global"`) or a k-wide average pool whose cells are flattened (the
    reference code's is 4x4; a map smaller than k is pooled whole). For vector features:
    Linear -> BN1d -> linear."""

    def __init__(self, in_channels: int, width: int, num_classes: int, sample: Tensor, pool="global"):
        super().__init__()
        dims = sample.dim()
        if dims in (3, 4):
            conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 4 else (nn.Conv1d, nn.BatchNorm1d)
            if pool == "global":
                pooling = nn.AdaptiveAvgPool2d(1) if dims == 4 else nn.AdaptiveAvgPool1d(1)
            else:
                k = [min(int(pool), n) for n in sample.shape[2:]]
                pooling = nn.AvgPool2d(k) if dims == 4 else nn.AvgPool1d(k[0])
            self.proj = nn.Sequential(conv(in_channels, width, 1, bias=False), bn(width), pooling, nn.Flatten(1))
            cells = 1
            if pool != "global":
                for n, kk in zip(sample.shape[2:], k):
                    cells *= n // kk
            features = width * cells
        elif dims == 2:
            self.proj = nn.Sequential(nn.Linear(in_channels, width, bias=False), nn.BatchNorm1d(width))
            features = width
        else:
            raise KdlabError(f"a TR head needs (B, C), (B, C, L) or (B, C, H, W) features, got {dims}-D")
        self.fc = nn.Linear(features, num_classes)

    def forward(self, feat: Tensor) -> Tensor:
        return self.fc(self.proj(feat))


def check_staged(student: nn.Module) -> int:
    """Number of body stages (stages after the stem) of a zoo student."""
    for attr in ("stage_names", "stage_channels", "features", "classify", "fc"):
        if not hasattr(student, attr):
            raise KdlabError(
                f"education needs a staged zoo student (stage_names, features, classify, fc); "
                f"{type(student).__name__} has no `{attr}`"
            )
    return len(student.stage_names) - 1


def default_grade_stages(body_stages: int, grades: int) -> list[int]:
    """Body stages in use after each grade, spread evenly; the last grade uses them all."""
    return [max(0, round(body_stages * (g + 1) / grades)) for g in range(grades)]


def check_grade_stages(stages: Sequence[int], body_stages: int) -> None:
    if stages[-1] != body_stages:
        raise KdlabError(
            f"grade_stages {list(stages)}: the last grade must use all {body_stages} body stages of the student "
            f"(so the final model is the plain student); set its last entry to {body_stages}"
        )


class GradeModel(nn.Module):
    """The student as trained in one grade: stem + body stages 1..upto, then a head."""

    def __init__(self, student: nn.Module, upto: int, columns: Sequence[int], final: bool, sample: Tensor,
                 pool="global"):
        super().__init__()
        self.student = student
        self.upto = upto  # index into stage_names (0 = stem only)
        self.final = final
        self.register_buffer("columns", torch.as_tensor(list(columns), dtype=torch.long), persistent=False)
        self.head: Optional[TRHead] = None
        if not final:
            was = student.training
            student.eval()
            with torch.no_grad():
                feat = student.features(sample[:2], upto=upto)
            student.train(was)
            width = int(student.feat_dim)
            self.head = TRHead(feat.shape[1], width, len(columns), feat, pool).to(sample.device)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.student.features(x, upto=self.upto)
        return self.student.classify(feat) if self.final else self.head(feat)

    def trainable(self) -> list[nn.Parameter]:
        """Parameters of the stages in use and of the head; later stages wait their grade."""
        params = []
        for name in self.student.stage_names[: self.upto + 1]:
            params += list(self.student.get_submodule(name).parameters())
        if self.final:
            used = {id(p) for p in params}
            params += [p for p in self.student.parameters() if id(p) not in used]
        else:
            params += list(self.head.parameters())
        return params

    def set_mode(self, training: bool) -> "GradeModel":
        """Train mode for the parts in use only, so the BN statistics of stages not yet grown
        stay untouched."""
        self.eval()
        if training:
            for name in self.student.stage_names[: self.upto + 1]:
                self.student.get_submodule(name).train()
            if self.final:
                self.student.train()
            else:
                self.head.train()
        return self


def column_index(columns: Sequence[int], num_classes: int, device) -> Tensor:
    """class id -> logit column (-1 for classes not in `columns`)."""
    lut = torch.full((num_classes,), -1, dtype=torch.long, device=device)
    lut[torch.as_tensor(list(columns), dtype=torch.long, device=device)] = torch.arange(len(columns), device=device)
    return lut
