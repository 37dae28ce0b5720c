"""SB3-style callbacks: phase-named hooks the trainer calls during ``learn``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from appo_algo.rollout import Episode
    from appo_algo.trainer import APPOTrainer


class Callback:
    """Override the hooks you need; ``on_step`` returning False stops training after that step.

    ``on_step`` runs before the step's metrics are logged: keys a callback adds to ``metrics`` are logged too.
    """

    def on_training_start(self, trainer: "APPOTrainer") -> None: ...

    def on_rollout_start(self, trainer: "APPOTrainer") -> None: ...

    def on_rollout_end(self, trainer: "APPOTrainer", episodes: Sequence["Episode"]) -> None: ...

    def on_branch(self, trainer: "APPOTrainer", minibatch: int, branches: Sequence["Episode"],
                  metrics: dict[str, float]) -> None: ...

    def on_update(self, trainer: "APPOTrainer", minibatch: int, metrics: dict[str, float]) -> None: ...

    def on_step(self, trainer: "APPOTrainer", metrics: dict[str, float]) -> bool:
        return True

    def on_training_end(self, trainer: "APPOTrainer") -> None: ...


class CallbackList(Callback):
    """Several callbacks called in order."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = list(callbacks)

    def on_training_start(self, trainer: Any) -> None:
        for c in self.callbacks:
            c.on_training_start(trainer)

    def on_rollout_start(self, trainer: Any) -> None:
        for c in self.callbacks:
            c.on_rollout_start(trainer)

    def on_rollout_end(self, trainer: Any, episodes: Sequence[Any]) -> None:
        for c in self.callbacks:
            c.on_rollout_end(trainer, episodes)

    def on_branch(self, trainer: Any, minibatch: int, branches: Sequence[Any], metrics: dict[str, float]) -> None:
        for c in self.callbacks:
            c.on_branch(trainer, minibatch, branches, metrics)

    def on_update(self, trainer: Any, minibatch: int, metrics: dict[str, float]) -> None:
        for c in self.callbacks:
            c.on_update(trainer, minibatch, metrics)

    def on_step(self, trainer: Any, metrics: dict[str, float]) -> bool:
        return all([c.on_step(trainer, metrics) for c in self.callbacks])

    def on_training_end(self, trainer: Any) -> None:
        for c in self.callbacks:
            c.on_training_end(trainer)


def as_callback(callback: Callback | Sequence[Callback] | None) -> Callback:
    """None, one callback or a list of them -> one callback."""
    if callback is None:
        return Callback()
    if isinstance(callback, Callback):
        return callback
    return CallbackList(callback)
