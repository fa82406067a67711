"""Drafters: what proposes the γ tokens that the target verifies.

* `base`: the interface (`Drafter`, `ExtraPositionsDrafter`) and what every
  drafter shares (`draw`, vocabulary checks, reading its `.npz` file);
* `model`: `ModelDrafter`, a smaller T5 with its own cache;
* `ngram`: `UnigramDrafter`, `BigramDrafter` and their counts files;
* `lookahead`: PaSS, the target drafting through look-ahead embeddings;
* `registry`: `build_drafter`, the one way from a `DrafterSpec` to a drafter.

Counting n-grams and training look-ahead embeddings live in
`specdec_t5x.training`.
"""

from specdec_t5x.drafters.base import (
    VOCAB_PADDING_MULTIPLE,
    Drafter,
    ExtraPositionsDrafter,
    align_logits,
    catch_up,
    check_vocab_compatible,
    draw,
    jitted_init,
    last_inputs,
    num_extra_positions,
    read_drafter_file,
)
from specdec_t5x.drafters.lookahead import (
    PassDrafter,
    PassDraftState,
    load_pass_drafter,
)
from specdec_t5x.drafters.model import ModelDrafter, ModelDraftState, with_logits_dtype
from specdec_t5x.drafters.ngram import (
    DEFAULT_SMOOTHING,
    BigramDrafter,
    NgramCounts,
    UnigramDrafter,
    load_counts,
    load_drafters,
    save_counts,
)
from specdec_t5x.drafters.registry import (
    BUILDERS,
    DrafterSpec,
    DraftUnavailable,
    build_drafter,
    for_gamma,
)

__all__ = [
    'with_logits_dtype',
    'BUILDERS', 'DEFAULT_SMOOTHING', 'VOCAB_PADDING_MULTIPLE', 'BigramDrafter', 'DraftUnavailable',
    'Drafter', 'DrafterSpec', 'ExtraPositionsDrafter', 'ModelDraftState', 'ModelDrafter',
    'NgramCounts', 'PassDraftState', 'PassDrafter', 'UnigramDrafter', 'align_logits',
    'build_drafter', 'catch_up', 'check_vocab_compatible', 'draw', 'for_gamma', 'jitted_init',
    'last_inputs', 'load_counts', 'load_drafters', 'load_pass_drafter', 'num_extra_positions',
    'read_drafter_file', 'save_counts',
]
