"""The transformers adapter: any ``Trainer`` gets hpcrun's wall-clock saves, signals and deadline
(:class:`TimeTriggerCallback`), and atomic ``step-N`` checkpoints (:class:`HpcrunTrainer`)."""

from hpcrun.frameworks.transformers.callback import TimeTriggerCallback
from hpcrun.frameworks.transformers.trainer import HpcrunTrainer, hpcrun_trainer

__all__ = ["HpcrunTrainer", "TimeTriggerCallback", "hpcrun_trainer"]
