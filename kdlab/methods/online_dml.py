"""Deep mutual learning: the student and peer networks train together from scratch, each
learning from the labels and from the others' predictions; no pre-trained teacher."""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.config.schema import ModelSpec
from kdlab.errors import KdlabError
from kdlab.methods.base import Method, MethodContext, MethodParams, Needs, Outputs, register_method
from kdlab.methods.logit_utils import softened_kl_per_sample
from kdlab.models.build import build_model


def fresh_copy(model: nn.Module) -> nn.Module:
    """Same architecture, new random weights (drawn from the seeded global generator)."""
    peer = copy.deepcopy(model)
    for m in peer.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if hasattr(peer, "init_weights"):
        peer.init_weights()  # zoo models' own init (He for convolutions)
    return peer


def build_peer(spec: Optional[ModelSpec], ctx: MethodContext) -> nn.Module:
    if spec is None:
        if ctx.student is None:
            raise KdlabError("method 'dml' needs the student to copy its architecture; or give `peer: {name: ...}`")
        return fresh_copy(ctx.student)
    data = ctx.data
    if data is None:
        raise KdlabError("method 'dml' with a `peer` model needs the data (num_classes, input_shape) to build it")
    return build_model(spec, data)


def mutual_kl(target_logits: list[Tensor], logits: Tensor, tau: float) -> Tensor:
    """Mean over the other networks l of tau^2 * KL(p_l || p) (batch mean), p_l detached:
    each network is pulled towards the others, never the others towards it in this term."""
    kls = [softened_kl_per_sample(logits, t.detach(), tau).mean() for t in target_logits]
    return torch.stack(kls).mean()


@register_method(
    "dml",
    "deep mutual learning: peer networks trained jointly with the student; each peer gets "
    "CE + KL to the others, the student gets KL to the peers (add `ce` for its own CE)",
    "Zhang et al. 2018, arXiv:1706.00384",
)
class DeepMutualLearning(Method):
    uses_teacher = False

    class Params(MethodParams):
        # Peer architecture {name, params}; default: the student's architecture.
        peer: Optional[ModelSpec] = None
        num_peers: int = Field(1, ge=1)
        tau: float = Field(1.0, gt=0)  # the paper uses plain softmax (tau = 1)

    def __init__(self, params, ctx: MethodContext):
        super().__init__(params, ctx)
        self.peers = nn.ModuleList([build_peer(params.peer, ctx) for _ in range(params.num_peers)])
        self.task = ctx.task
        if ctx.device is not None:
            self.peers.to(ctx.device)

    def _peer_logits(self, peer: nn.Module, batch) -> Tensor:
        out = self.task.forward(peer, batch) if self.task is not None else peer(batch["x"])
        return (out.logits if isinstance(out, Outputs) else out).float()

    def forward(self, batch, student, teachers):
        tau = self.params.tau
        s = student.logits.float()
        peers = [self._peer_logits(p, batch) for p in self.peers]
        if s.shape[-1] != peers[0].shape[-1]:
            raise KdlabError(f"method 'dml': peers give {peers[0].shape[-1]} logits but the student {s.shape[-1]}")
        nets = [s, *peers]
        peer_loss = 0.0
        for i, z in enumerate(peers, start=1):
            others = [n for j, n in enumerate(nets) if j != i]
            peer_loss = peer_loss + F.cross_entropy(z, batch["y"]) + mutual_kl(others, z, tau)
        return {"dml": mutual_kl(peers, s, tau), "dml_peers": peer_loss}
