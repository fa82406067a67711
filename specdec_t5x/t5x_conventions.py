"""T5X's conventions the speculative model follows, and T5X's own decoding as the baseline.

t5x is optional: this module imports without it (`t5x_models` is then None),
and what needs it raises an `ImportError` that says how to install it.
"""

from __future__ import annotations

import functools
from typing import Any

from specdec_t5x import sampling as sampling_lib

try:
  from t5x import decoding as t5x_decoding
  from t5x import models as t5x_models
except ImportError as _err:  # t5x is optional: only this module's classes need it
  t5x_decoding = t5x_models = None
  _T5X_IMPORT_ERROR: ImportError | None = _err
else:
  _T5X_IMPORT_ERROR = None


T5X_INSTALL_HINT = (
    't5x is not importable, and SpeculativeEncoderDecoderModel subclasses '
    't5x.models.EncoderDecoderModel. t5x is not on PyPI; install it from GitHub next to '
    'specdec_t5x (tested at commit cc342d4): `pip install "t5x @ git+https://github.com/'
    'google-research/t5x@cc342d419ec3e3e9c4bf1df33c82330cafdc1e16"`; see docs/t5x.md.')


def _require_t5x() -> None:
  if t5x_models is None:
    raise ImportError(T5X_INSTALL_HINT) from _T5X_IMPORT_ERROR


class _T5XNotInstalled:
  """Stands in for `t5x.models.EncoderDecoderModel` when t5x is missing."""

  def __init__(self, *args: Any, **kwargs: Any):
    del args, kwargs
    _require_t5x()


_EncoderDecoderModel = t5x_models.EncoderDecoderModel if t5x_models else _T5XNotInstalled
_BEAM_SEARCH = t5x_decoding.beam_search if t5x_decoding else None


def t5x_eos_id(vocabulary: Any) -> int:
  """The EOS id T5X's own decoding stops at for an output `vocabulary`.

  `EncoderDecoderModel.predict_batch_with_aux` (t5x/models.py at the tested
  commit) uses `vocabulary.eos_id or 1`: a vocabulary without an EOS (None,
  seqio's `PassThroughVocabulary` default) and one whose EOS is 0, the id T5
  reserves for padding and BOS, both stop at 1. The speculative model stops
  where T5X's `decode_fn` would, so that its outputs are the baseline's.
  """
  return int(vocabulary.eos_id or 1)


def t5x_sampling_decode_fn(temperature: float = 0.0, top_k: int = 0,
                           top_p: float = 1.0) -> Any:
  """T5X's own `decoding.temperature_sample` with our sampling conventions.

  The baseline T5X decode for the same settings (speculative.gin binds it, so
  `GAMMA=0` is plain T5X): temperature 0 is greedy, `top_k` 0 and `top_p` 1
  are off. (T5X's `temperature_sample` defaults to `topk=1`, i.e. greedy at any
  temperature, and spells "top-p off" as 0.) T5X allows only one of top-k and
  top-p.
  """
  _require_t5x()
  sampling = sampling_lib.make_sampling_config(temperature, top_k, top_p)
  if sampling.top_k and sampling.top_p < 1.0:
    raise ValueError('T5X\'s temperature_sample takes top-k or top-p, not both; got '
                     f'top_k={top_k}, top_p={top_p}')
  t5x_top_p = 0.0 if sampling.top_p == 1.0 else sampling.top_p
  return functools.partial(t5x_decoding.temperature_sample, temperature=sampling.temperature,
                           topk=sampling.top_k, topp=t5x_top_p)
