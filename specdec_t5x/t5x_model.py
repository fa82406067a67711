"""Speculative decoding inside `python -m t5x.infer`: a T5X `EncoderDecoderModel` subclass.

T5X's `decode_fn` contract feeds one token per call, so a speculative loop
cannot be a plain `decode_fn`; `SpeculativeEncoderDecoderModel` overrides
`predict_batch_with_aux` instead and runs `specdec_t5x.decoding.speculative_decode`
with the target parameters exactly as T5X passes them (restored, partitioned,
traced inside T5X's partitioned inference step) and a draft configured in gin.

Switching it on from an ordinary T5X command line (see gin/speculative.gin and
docs/t5x.md)::

  python -m t5x.infer --gin_file=t5x/examples/t5/t5_1_1/xxl.gin \
    --gin_file=t5x/configs/runs/infer.gin --gin_file=gin/speculative.gin \
    --gin.DRAFT_CHECKPOINT="'gs://.../t5_small/checkpoint_1000000'" \
    --gin.DRAFT_CONFIG="'t5_1_1_small'" --gin.GAMMA=7 ...

`speculative_model(model, ...)` wraps the `EncoderDecoderModel` the model gin
file configured, so every other setting of that file (vocabularies, optimizer,
feature converter, losses) carries over unchanged. T5X's example network is
swapped for `specdec_t5x.network.Transformer` with the same `T5Config`: the
parameter tree, logical axes and outputs are identical, and its cache accepts
the γ+1 query positions a verification step needs.

The draft (a `DRAFT_CHECKPOINT`, or the n-gram and PaSS files of gin/drafts/)
is built through the drafter registry and placed on the step's mesh,
replicated or sharded by the logical axis rules (`specdec_t5x.t5x_drafting`).
Its arrays enter T5X's partitioned step as closed-over arrays, which JAX
embeds in the compiled program unless `JAX_USE_SIMPLIFIED_JAXPR_CONSTANTS=true`
(then they stay device buffers passed to it): set it for drafts of more than a
few hundred MB (docs/t5x.md).

t5x is not a dependency of the package: this module imports without it, and
constructing the model raises an `ImportError` that says how to install it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

import jax
import jax.numpy as jnp
from flax.linen import partitioning as flax_partitioning

from specdec_t5x import adaptive, decoding, network, t5x_drafting
from specdec_t5x import drafters as drafters_lib
from specdec_t5x import sampling as sampling_lib
from specdec_t5x.t5x_conventions import (  # noqa: F401  (re-exported: gin and tests)
  _BEAM_SEARCH,
  T5X_INSTALL_HINT,
  _EncoderDecoderModel,
  _require_t5x,
  t5x_eos_id,
  t5x_models,
  t5x_sampling_decode_fn,
)

logger = logging.getLogger(__name__)

PyTree = Any
Array = jax.Array


# ------------------------------------------------------------------------------
# The model.
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpeculationConfig:
  """What `SpeculativeEncoderDecoderModel` decodes with (γ = 0 or no draft: plain T5X)."""

  gamma: int | str = 0  # or 'auto', with a cost_profile file (see `specdec_t5x.adaptive`)
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  draft_partitioning: str = 'replicated'
  max_gamma: int = adaptive.DEFAULT_MAX_GAMMA
  cost_profile: str | None = None

  def __post_init__(self):
    if self.gamma == adaptive.AUTO:
      if not self.cost_profile:
        raise ValueError("gamma='auto' under T5X needs cost_profile (COST_PROFILE in gin): a "
                         'profile file saved by specdec_t5x.calibration (T5X traces the '
                         'prediction step, where the loop cannot be timed)')
    elif (isinstance(self.gamma, bool) or not isinstance(self.gamma, int | float)
          or int(self.gamma) != self.gamma or self.gamma < 0):
      raise ValueError(f"gamma must be an integer >= 0 (0 switches speculation off) or 'auto', "
                       f'got {self.gamma!r}')
    if self.draft_partitioning not in t5x_drafting.DRAFT_PARTITIONINGS:
      raise ValueError(f'draft_partitioning must be one of {t5x_drafting.DRAFT_PARTITIONINGS}, got '
                       f'{self.draft_partitioning!r}')
    # Raises a ValueError for a bad temperature, top_k or top_p.
    sampling_lib.make_sampling_config(self.temperature, self.top_k, self.top_p)

  @property
  def sampling(self) -> sampling_lib.SamplingConfig:
    return sampling_lib.make_sampling_config(self.temperature, self.top_k, self.top_p)


class SpeculativeEncoderDecoderModel(_EncoderDecoderModel):
  """`t5x.models.EncoderDecoderModel` whose predictions come from speculative decoding.

  Everything except `predict_batch_with_aux` (training loss, scoring,
  initialisation) is the parent's. With γ = 0 or no draft, prediction is the
  parent's too, with the module exactly as given.

  With speculation on, `predict_batch_with_aux` decodes up to the batch's
  `decoder_input_tokens` length (as T5X does), stops each row at the output
  vocabulary's EOS, and returns tokens `[batch, length]` (0 after EOS) with aux:

    scores: `[batch]` log-probability of each output under the sampling
      transform, as T5X's `temperature_sample` reports it (0 when greedy);
    decode_lengths: `[batch]` tokens emitted, EOS included;
    speculative_iterations: `[batch]` draft-and-verify iterations the row took;
    speculative_accepted: `[batch]` draft tokens kept;
    speculative_beta_mean: `[batch]` mean β = Σ min(p, q) over verified
      positions, an estimate of the acceptance rate α.

  With `num_decodes > 1` each input is decoded that many times and the outputs
  are sorted by score as T5X does (highest last); `return_all_decodes` gives
  all of them (`[batch, num_decodes, ...]`).
  """

  def __init__(self, module: Any, input_vocabulary: Any, output_vocabulary: Any,
               optimizer_def: Any, decode_fn: Any = _BEAM_SEARCH,
               feature_converter_cls: Any = None, label_smoothing: float = 0.0,
               z_loss: float = 0.0, loss_normalizing_factor: Any = None,
               default_decoder_params: Any = None, *, draft_checkpoint: str | None = None,
               draft_config: Any = None, drafter: Any = None, gamma: int | str = 0,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               draft_params_dtype: Any = None, draft_partitioning: str = 'replicated',
               max_gamma: int = adaptive.DEFAULT_MAX_GAMMA, cost_profile: str | None = None):
    """Args after T5X's `EncoderDecoderModel` ones (all gin-configurable):

    Args:
      draft_checkpoint: a T5X checkpoint (Orbax or legacy) of the draft model.
      draft_config: the draft's `T5Config`, or a preset name such as
        't5_1_1_small' (which then computes in the target config's dtype).
      drafter: instead of a checkpoint, a ready `specdec_t5x.drafters.Drafter`
        or a `drafters.DrafterSpec` (what the gin factories of
        `specdec_t5x.t5x_drafting` return), built through the registry for
        this target and γ.
      gamma: draft tokens per iteration; 0 switches speculation off; 'auto'
        chooses γ ≤ max_gamma per iteration from `cost_profile`, a file of
        `adaptive.CostProfile.save` measured for these models and shapes
        (used as given: T5X casts and places the models its own way).
      temperature, top_k, top_p: sampling (temperature 0 is greedy), applied
        to target and draft alike.
      draft_params_dtype: dtype of a model draft's parameters on the devices;
        None matches the target's parameters as T5X restored them (bfloat16
        with infer.gin's `RestoreCheckpointConfig.dtype`).
      draft_partitioning: 'replicated' or 'logical' (see
        `t5x_drafting.drafter_shardings`).
    """
    super().__init__(module=module, input_vocabulary=input_vocabulary,
                     output_vocabulary=output_vocabulary, optimizer_def=optimizer_def,
                     decode_fn=decode_fn, feature_converter_cls=feature_converter_cls,
                     label_smoothing=label_smoothing, z_loss=z_loss,
                     loss_normalizing_factor=loss_normalizing_factor,
                     default_decoder_params=default_decoder_params)
    self._configure_speculation(
        draft_checkpoint=draft_checkpoint, draft_config=draft_config, drafter=drafter,
        gamma=gamma, temperature=temperature, top_k=top_k, top_p=top_p,
        draft_params_dtype=draft_params_dtype, draft_partitioning=draft_partitioning,
        max_gamma=max_gamma, cost_profile=cost_profile)

  # -- configuration ------------------------------------------------------------

  def _configure_speculation(self, *, draft_checkpoint: str | None, draft_config: Any,
                             drafter: Any, gamma: int, temperature: float, top_k: int,
                             top_p: float, draft_params_dtype: Any, draft_partitioning: str,
                             max_gamma: int, cost_profile: str | None) -> None:
    self.speculation = SpeculationConfig(gamma=gamma, temperature=temperature, top_k=top_k,
                                         top_p=top_p, draft_partitioning=draft_partitioning,
                                         max_gamma=max_gamma, cost_profile=cost_profile)
    if draft_checkpoint and drafter is not None:
      raise ValueError('give either draft_checkpoint (with draft_config) or drafter, not both')
    if draft_checkpoint and draft_config is None:
      raise ValueError(f'draft_checkpoint {draft_checkpoint!r} needs draft_config (a T5Config '
                       f'or a preset name: {sorted(network.PRESETS)})')
    self._drafter = None
    self._draft_params_dtype = draft_params_dtype
    self._placed_drafters: dict[Any, Any] = {}
    has_draft = bool(draft_checkpoint) or drafter is not None
    if self.speculation.gamma == 0 or not has_draft:
      logger.info('Speculative decoding is off (gamma=%s, draft given: %s); predicting with '
                  'T5X\'s decode_fn.', self.speculation.gamma, has_draft)
      return

    self.module = t5x_drafting.as_specdec_module(self.module)
    target_config = self.module.config
    if drafter is None:
      drafter = t5x_drafting.model_draft_spec(draft_checkpoint, draft_config, target_config)
    spec = self.speculation
    drafter = t5x_drafting.build_draft(
        drafter, self.module, spec.max_gamma if spec.gamma == adaptive.AUTO else spec.gamma,
        params_dtype=draft_params_dtype)
    drafters_lib.check_vocab_compatible(target_config.vocab_size, drafter.vocab_size)
    output_vocab_size = getattr(self.output_vocabulary, 'vocab_size', None)
    if output_vocab_size is not None and output_vocab_size > target_config.vocab_size:
      raise ValueError(f'the output vocabulary has {output_vocab_size} ids but the target model '
                       f'only {target_config.vocab_size}')
    self._drafter = drafter
    logger.info('Speculative decoding on: gamma=%s, %s, draft %s (%.1f MB of arrays).',
                self.speculation.gamma, self.speculation.sampling, type(drafter).__name__,
                t5x_drafting.tree_nbytes(drafter) / 2**20)

  @property
  def speculation_enabled(self) -> bool:
    return self._drafter is not None

  @property
  def drafter(self) -> Any:
    """The draft as configured (host arrays), or None when speculation is off."""
    return self._drafter

  def _drafter_for_step(self, target_params: PyTree) -> Any:
    """The draft for the step being traced: in its dtype, on the step's mesh.

    Cached per (dtype, mesh, axis rules): T5X traces its step once per shape.
    """
    dtype = jnp.dtype(self._draft_params_dtype or t5x_drafting.floating_dtype(target_params))
    mesh = t5x_drafting.active_mesh()
    rules = tuple(flax_partitioning.get_axis_rules())
    key = (dtype.name,) if mesh is None else (
        dtype.name, mesh.devices.shape, tuple(d.id for d in mesh.devices.flat),
        mesh.axis_names, rules if self.speculation.draft_partitioning == 'logical' else None)
    if key in self._placed_drafters:
      return self._placed_drafters[key]
    drafter = t5x_drafting.place_drafter(self._drafter, dtype, mesh,
                                         self.speculation.draft_partitioning, rules)
    self._placed_drafters[key] = drafter
    return drafter

  def _auto_arguments(self) -> dict[str, Any]:
    spec = self.speculation
    if spec.gamma != adaptive.AUTO:
      return {}
    profile = dataclasses.replace(adaptive.CostProfile.load(spec.cost_profile), key=None)
    return {'max_gamma': spec.max_gamma, 'cost_profile': profile}

  # -- prediction ---------------------------------------------------------------

  def predict_batch_with_aux(
      self, params: PyTree, batch: Mapping[str, Array], rng: Array | None = None,
      decoder_params: MutableMapping[str, Any] | None = None,
      return_all_decodes: bool | None = None, num_decodes: int | None = None,
      prompt_with_targets: bool = False) -> tuple[Array, Mapping[str, Array]]:
    """Speculative decoding of `batch['encoder_input_tokens']` (see the class docstring)."""
    if not self.speculation_enabled:
      return super().predict_batch_with_aux(
          params, batch, rng=rng, decoder_params=decoder_params,
          return_all_decodes=return_all_decodes, num_decodes=num_decodes,
          prompt_with_targets=prompt_with_targets)
    if prompt_with_targets:
      raise ValueError('speculative decoding does not support prompt_with_targets (decoder '
                       'prompts); set GAMMA=0 to use T5X\'s decode_fn')
    if return_all_decodes is None:
      return_all_decodes = self._default_decoder_params.return_all_decodes
    if num_decodes is None:
      num_decodes = self._default_decoder_params.num_decodes
    rng, eos_id = self._decode_rng_and_eos(rng, decoder_params)

    encoder_input_tokens = batch['encoder_input_tokens']
    batch_size, max_decode_len = batch['decoder_input_tokens'].shape
    # [batch * num_decodes, length], each row repeated in place like T5X's expansion.
    expanded_inputs = jnp.repeat(encoder_input_tokens, num_decodes, axis=0)
    spec = self.speculation
    output = decoding.speculative_decode(
        self.module, params, self._drafter_for_step(params), expanded_inputs,
        gamma=spec.gamma, max_decode_len=max_decode_len, rng=rng, temperature=spec.temperature,
        top_k=spec.top_k, top_p=spec.top_p, eos_id=eos_id, **self._auto_arguments())
    scores = self._sequence_scores(params, expanded_inputs, output.tokens, output.lengths)

    per_decode = {
        'tokens': output.tokens, 'scores': scores, 'decode_lengths': output.lengths,
        'speculative_iterations': output.iterations,
        'speculative_accepted': output.accepted,
        'speculative_beta_mean': output.beta_mean,
    }
    per_decode = {name: value.reshape((batch_size, num_decodes) + value.shape[1:])
                  for name, value in per_decode.items()}
    # Sorted by increasing score, as T5X's decoders return them (best last).
    order = jnp.argsort(per_decode['scores'], axis=1)
    per_decode = {name: jnp.take_along_axis(value, order.reshape(order.shape + (1,) * (
        value.ndim - 2)), axis=1) for name, value in per_decode.items()}
    if not return_all_decodes:
      per_decode = {name: value[:, -1] for name, value in per_decode.items()}
    tokens = per_decode.pop('tokens')
    return tokens, per_decode

  def _decode_rng_and_eos(self, rng: Array | None,
                          decoder_params: Mapping[str, Any] | None) -> tuple[Array | None, int]:
    """The PRNG key and EOS id, from the arguments as T5X's parent method reads them."""
    decoder_params = dict(decoder_params or {})
    decode_rng = decoder_params.pop('decode_rng', None)
    if rng is not None and decode_rng is not None:
      raise ValueError('got a PRNG key both as `rng` and as decoder_params["decode_rng"]; '
                       'pass one')
    eos_id = decoder_params.pop('eos_id', t5x_eos_id(self.output_vocabulary))
    if decoder_params:
      raise ValueError(f'decoder_params {sorted(decoder_params)} are not supported by '
                       'speculative decoding; gamma and sampling are model settings')
    return (rng if rng is not None else decode_rng), int(eos_id)

  def _sequence_scores(self, params: PyTree, encoder_input_tokens: Array, tokens: Array,
                       lengths: Array) -> Array:
    """`[batch]` log-probabilities of `tokens [batch, T]` under the sampling transform.

    What T5X's `temperature_sample` reports (`rescale_log_probs=True`): 0 when
    greedy, else the sum over emitted tokens of log p'(token), p' the
    transformed target distribution, here from one teacher-forced pass.
    """
    sampling = self.speculation.sampling
    if sampling.greedy:
      return jnp.zeros(tokens.shape[:1], jnp.float32)
    emitted = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    decoder_inputs = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))  # BOS (0), then the outputs
    # The module masks positions whose target is 0 as padding; a model may emit
    # id 0 itself, so the mask comes from the lengths, not from the tokens.
    logits = self.module.apply({'params': params}, encoder_input_tokens, decoder_inputs,
                               emitted.astype(jnp.int32), enable_dropout=False)
    log_probs = jax.nn.log_softmax(sampling_lib.transform_logits(logits, sampling), axis=-1)
    token_log_probs = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(emitted, token_log_probs, 0.0), axis=1)


def speculative_model(model: Any, *, draft_checkpoint: str | None = None,
                      draft_config: Any = None, drafter: Any = None, gamma: int | str = 0,
                      temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                      draft_params_dtype: Any = None, draft_partitioning: str = 'replicated',
                      max_gamma: int = adaptive.DEFAULT_MAX_GAMMA,
                      cost_profile: str | None = None) -> SpeculativeEncoderDecoderModel:
  """`model` (a configured T5X `EncoderDecoderModel`) with speculative prediction.

  Every setting of `model` is kept (gin/speculative.gin wraps whatever MODEL
  the model gin file built); the speculative arguments are those of
  `SpeculativeEncoderDecoderModel`.
  """
  _require_t5x()
  if not isinstance(model, t5x_models.EncoderDecoderModel):
    raise ValueError('speculative decoding needs an encoder-decoder model '
                     f'(t5x.models.EncoderDecoderModel), got {type(model).__name__}')
  wrapped = SpeculativeEncoderDecoderModel.__new__(SpeculativeEncoderDecoderModel)
  # Copying the instance state keeps every constructor setting of the parent,
  # including ones a newer T5X may add, without re-listing them here.
  wrapped.__dict__.update(vars(model))
  wrapped._configure_speculation(
      draft_checkpoint=draft_checkpoint, draft_config=draft_config, drafter=drafter,
      gamma=gamma, temperature=temperature, top_k=top_k, top_p=top_p,
      draft_params_dtype=draft_params_dtype, draft_partitioning=draft_partitioning,
      max_gamma=max_gamma, cost_profile=cost_profile)
  return wrapped


__all__ = [
    'SpeculationConfig', 'SpeculativeEncoderDecoderModel', 'T5X_INSTALL_HINT',
    'speculative_model', 't5x_eos_id', 't5x_sampling_decode_fn',
]
