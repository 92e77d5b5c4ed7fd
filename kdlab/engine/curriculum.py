"""What the trainer trains in each epoch: which module, on which batches, taught how, and
validated how. The default below is ordinary distillation; a recipe that changes these (the
grades of education distillation) overrides hooks here while the loop stays in `Trainer`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from torch import nn

from kdlab.knowledge.outputs import Outputs

if TYPE_CHECKING:  # only for annotations: the trainer hands itself to `attach`
    from kdlab.engine.trainer import Trainer


class Curriculum:
    """The student with the methods (one module for the whole run), on the shuffled training
    split, every teacher on every batch, validated by the task on the validation split."""

    # DDP must tolerate parameters that a module leaves unused (stages not grown yet).
    find_unused_parameters = False
    # When `module(epoch)` returns a new module: carry the optimiser state of surviving
    # parameters into the new optimiser (else it starts afresh).
    keep_optimizer_state = False

    def attach(self, trainer: "Trainer") -> None:
        self.trainer = trainer

    def module(self, epoch: int) -> nn.Module:
        return self.trainer.distill_module

    def parameters(self, module: nn.Module) -> Iterable[nn.Parameter]:
        return module.parameters()

    def batches(self, epoch: int):
        """A sized iterable of the epoch's batches (seeded by (seed, epoch))."""
        loader = self.trainer.train_loader
        loader.set_epoch(epoch)
        return loader

    def steps(self, epoch: int) -> int:
        return len(self.trainer.train_loader)

    def teacher_outputs(self, batch) -> list[Outputs]:
        return self.trainer.teacher_outputs(batch)

    def set_train_mode(self, module: nn.Module) -> None:
        module.train()

    def validate(self, epoch: int) -> dict[str, float]:
        return self.trainer.evaluate(self.trainer.student, self.trainer.data.val)

    def epoch_fields(self, epoch: int) -> dict[str, Any]:
        """Extra fields of the epoch's record."""
        return {}

    def selectable(self, epoch: int) -> bool:
        """Whether this epoch's weights may be chosen as the best model."""
        return True

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {}
