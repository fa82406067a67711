"""Training: the T5 models (`models`), on one resumable loop (`loop`), and what drafts learn.

Modules: `models` (T5X's loss, schedule, step and `train`), `loop` (the
resumable training loop), `ngram_counts` (n-gram counts of a task's targets),
`lookahead` (PaSS look-ahead embeddings, on the same loop), `family` (the model
families of `configs/family.json`), `family_runs` (training them, distillations included)
and `evaluation` (BLEU/chrF, ROUGE and the family's quality checks). The package re-exports
the model-training names, so `training.train(...)` works as before; import the other modules
by name.
"""

from specdec_t5x.training.loop import (
  RUN_CONFIG_FILE,
  TRAIN_STATE_DIR,
  Batch,
  BatchFactory,
  skip_batches,
)
from specdec_t5x.training.models import (
  REQUIRED_FEATURES,
  SUMMARY_FILE,
  TrainHParams,
  TrainState,
  TrainSummary,
  check_batch,
  create_train_state,
  evaluate_loss,
  init_params,
  make_optimizer,
  make_train_step,
  rsqrt_schedule,
  train,
  weighted_cross_entropy,
)

__all__ = ['Batch', 'BatchFactory', 'REQUIRED_FEATURES', 'RUN_CONFIG_FILE', 'SUMMARY_FILE',
           'TRAIN_STATE_DIR', 'TrainHParams', 'TrainState', 'TrainSummary', 'check_batch',
           'create_train_state', 'evaluate_loss', 'init_params', 'make_optimizer',
           'make_train_step', 'rsqrt_schedule', 'skip_batches', 'train',
           'weighted_cross_entropy']
