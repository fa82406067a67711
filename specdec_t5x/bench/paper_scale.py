"""The paper's regime, measured: the loop at real T5 1.1 sizes with controlled acceptance.

Random weights (`random_weights.random_params`, EOS banned, so every request
decodes `max_decode_len` tokens), real T5 1.1 shapes. Per target shape:

1. costs: the autoregressive step, the scoring cost of K = 1..8 positions
   (`timing.scoring_costs`), each smaller T5 1.1 shape's c as its draft
   (`timing.step_costs` with a `ModelDrafter`, per γ used), and the per-request
   prefill (encoder + cache) of target and draft, in target steps;
2. the loop: every T=0 row of the paper's Table 2, at its γ and at the γ the
   measured costs make optimal, with a `ControlledDrafter` at the row's α,
   without a draft step (c = 0) and with the real draft's step (the row's Mq as
   the T5 1.1 shape of that size, when smaller than the target). Speculative
   and autoregressive decoding of the same inputs in interleaved rounds of one
   run; the speed is the median of the per-round ratios.

Theory: `theory.walltime_improvement_measured` at the α the drafter realised
(and at the paper's α) with the measured c and scoring cost; and the same for
requests of T tokens (`request_theory`: the expected iterations to emit T
tokens, plus the measured prefills), which is what a timed request can reach.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specdec_t5x import decoding, drafters, network, paper, theory
from specdec_t5x import sampling as sampling_lib
from specdec_t5x.bench import random_weights, timing
from specdec_t5x.drafters import controlled

SHAPES = ('t5_1_1_small', 't5_1_1_base', 't5_1_1_large', 't5_1_1_xl', 't5_1_1_xxl')
# The paper's drafts (Mq) as the T5 1.1 shapes of their size (index into a family).
MQ_INDEX = {'T5-small': 0, 'T5-base': 1, 'T5-large': 2}
# --quick: miniature shapes in the same roles (vocabulary 256), for tests.
QUICK_SHAPES: dict[str, dict[str, Any]] = {
    'quick_small': dict(vocab_size=256, emb_dim=16, num_heads=2, num_encoder_layers=1,
                        num_decoder_layers=1, head_dim=8, mlp_dim=32),
    'quick_base': dict(vocab_size=256, emb_dim=24, num_heads=2, num_encoder_layers=1,
                       num_decoder_layers=2, head_dim=12, mlp_dim=48),
    'quick_large': dict(vocab_size=256, emb_dim=32, num_heads=2, num_encoder_layers=1,
                        num_decoder_layers=2, head_dim=16, mlp_dim=64),
}
KS = tuple(range(1, 9))
GREEDY = sampling_lib.make_sampling_config(0.0, 0, 1.0)


def shape_config(name: str, dtype: Any) -> network.T5Config:
  """The `T5Config` of a T5 1.1 preset or a `QUICK_SHAPES` miniature, in `dtype`."""
  if name in QUICK_SHAPES:
    return network.T5Config(**QUICK_SHAPES[name], mlp_activations=('gelu', 'linear'),
                            dropout_rate=0.0, dtype=dtype)
  return network.config_from_preset(name, dtype=dtype)


def family_of(name: str) -> tuple[str, ...]:
  """The ordered shapes (small first) `name` belongs to."""
  return tuple(QUICK_SHAPES) if name in QUICK_SHAPES else SHAPES


def device_random_params(module: network.Transformer, encoder_length: int, seed: int,
                         dtype: Any) -> Any:
  """`random_weights.random_params`' scheme drawn on the device in `dtype`, EOS banned.

  NumPy draws 11B normals for T5-XXL in minutes on one host thread; an
  accelerator draws them in seconds, and never holds a float32 copy.
  """
  tokens = jnp.ones((1, encoder_length), jnp.int32)
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), tokens, tokens[:, :1],
                                              tokens[:, :1], enable_dropout=False))['params']
  query_scale = 1.0 / math.sqrt(module.config.head_dim)
  leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  draw = jax.jit(lambda key, std, shape: (jax.random.normal(key, shape, jnp.float32) * std
                                          ).astype(dtype), static_argnums=2)
  values = []
  for key, (path, leaf) in zip(keys, leaves, strict=True):
    names = [getattr(k, 'key', str(k)) for k in path]
    if names[-1] == 'scale':
      values.append(jnp.ones(leaf.shape, dtype))
      continue
    std = 1.0 / math.sqrt(leaf.shape[0]) * (query_scale if 'query' in names else 1.0)
    values.append(draw(key, std, leaf.shape))
  params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), values)
  kernel = params['decoder']['logits_dense']['kernel']
  kernel = kernel.at[:, random_weights.EOS_ID].set(0)  # as `random_weights.ban_eos`
  return dict(params, decoder=dict(params['decoder'], logits_dense={'kernel': kernel}))


def build_model(name: str, dtype: Any, encoder_length: int,
                seed: int) -> tuple[network.Transformer, Any]:
  """`(module, params)`: random weights (EOS banned) in `dtype`.

  On CPU `random_weights.random_params` (then cast); elsewhere drawn on the device.
  """
  module = network.Transformer(shape_config(name, dtype))
  if jax.default_backend() != 'cpu':
    return module, device_random_params(module, encoder_length, seed, dtype)
  params = random_weights.ban_eos(random_weights.random_params(module, 1, encoder_length, seed))
  if jnp.dtype(dtype) != jnp.float32:
    params = jax.tree_util.tree_map(lambda x: x.astype(dtype), params)
  return module, params


def draft_shape(target: str, mq: str) -> str | None:
  """The shape standing for the paper's `mq` when `target` is verified; None unless smaller."""
  family = family_of(target)
  index = MQ_INDEX[mq]
  return family[index] if index < family.index(target) else None


def table2_greedy_rows() -> list[dict[str, Any]]:
  """The paper's T=0 rows of Table 2: task, mq, gamma, alpha, paper_speed."""
  return [dict(task=task, mq=mq, gamma=gamma, alpha=alpha, paper_speed=speed)
          for task, mq, temperature, gamma, alpha, speed in paper.PAPER_TABLE2
          if temperature == 0.0]


def expected_iterations(alpha: float, gamma: int, tokens: int) -> float:
  """Expected iterations to emit `tokens` tokens with i.i.d. acceptances (the last one cut).

  Each iteration accepts a draft tokens with P(a) = α^a (1 − α) for a < γ and
  P(γ) = α^γ, and emits a + 1 (at most what is left).
  """
  probs = [alpha ** a * (1 - alpha) for a in range(gamma)] + [alpha ** gamma]
  needed = [0.0] * (tokens + 1)
  for n in range(1, tokens + 1):
    needed[n] = 1.0 + sum(p * needed[max(n - a - 1, 0)] for a, p in enumerate(probs))
  return needed[tokens]


def request_theory(alpha: float, gamma: int, c: float, scoring_cost: float, tokens: int,
                   prefill: float, draft_prefill: float) -> float:
  """The formula for whole requests of `tokens` tokens, costs in target steps.

  Autoregressive: `prefill + tokens` steps; speculative: `prefill + draft_prefill`
  plus the expected iterations times (γc + scoring_cost).
  """
  spec = prefill + draft_prefill + expected_iterations(alpha, gamma, tokens) * (
      gamma * c + scoring_cost)
  return (prefill + tokens) / spec


def _cost_rounds(settings: Mapping[str, Any]) -> int:
  return int(settings.get('cost_rounds', settings['rounds']))


def _median_time(fn: Any, repeats: int) -> float:
  timing.timed(fn)  # compiles
  return float(np.median([timing.timed(fn)[0] for _ in range(repeats)]))


def measure_costs(module: Any, params: Any, drafts: Mapping[str, tuple[Any, Any]],
                  gammas: Mapping[str, Sequence[int]], inputs: np.ndarray, reference: np.ndarray,
                  settings: Mapping[str, Any], progress: Any = None) -> dict[str, Any]:
  """Step, scoring curve K=1..8, c per (draft, γ), prefills. Ratios in target steps.

  Args:
    module, params: the target.
    drafts: draft shape -> (module, params).
    gammas: draft shape -> the γ its c is needed at.
    inputs: `[n, L]` encoder inputs; the first is timed. reference: `[n, T]` their decodes.
    settings: max_decode_len, cost_rounds (else rounds), sample_ms, seed.
  """
  length = settings['max_decode_len']
  cache_length = length + max(KS) + 1
  encoder = jnp.asarray(inputs[:1])
  scoring = timing.scoring_costs(module, params, encoder, KS, prefix=length // 2,
                                 cache_length=cache_length, rounds=_cost_rounds(settings),
                                 sample_ms=settings['sample_ms'], seed=settings['seed'],
                                 progress=progress)
  step_s = scoring['median_ms'][0] / 1e3
  prefill = _median_time(lambda: timing.target_cache(module, params, encoder, cache_length), 5)
  return {'target_step_ms': 1e3 * step_s, 'scoring': scoring,
          'scoring_curve': scoring['ratio_median'], 'prefill_steps': prefill / step_s,
          'drafts': {shape: draft_costs(module, params, *pair, gammas.get(shape, ()), inputs,
                                        reference, settings, step_s, progress)
                     for shape, pair in drafts.items()}}


def draft_costs(module: Any, params: Any, draft_module: Any, draft_params: Any,
                gammas: Sequence[int], inputs: np.ndarray, reference: np.ndarray,
                settings: Mapping[str, Any], step_s: float, progress: Any = None
                ) -> dict[str, Any]:
  """One draft shape's c at each of `gammas` (`timing.step_costs`), and its prefill in
  target steps of `step_s` seconds: `{'prefill_steps', 'c_by_gamma': {str(γ): {...}}}`."""
  length = settings['max_decode_len']
  cache_length = length + max(KS) + 1
  drafter = drafters.ModelDrafter(draft_module, draft_params)
  encoder = jnp.asarray(inputs[:1])
  init = _median_time(functools.partial(drafters.jitted_init, drafter, encoder, cache_length), 5)
  by_gamma = {}
  for gamma in sorted(set(gammas)):
    step = timing.step_costs(module, params, drafter, inputs[:1], reference[:1], gamma=gamma,
                             sampling=GREEDY, max_decode_len=length, cache_length=cache_length,
                             rounds=_cost_rounds(settings), sample_ms=settings['sample_ms'],
                             prefix=length // 2, seed=settings['seed'])
    by_gamma[str(gamma)] = {'c': step['c'], 'c_iqr': step['c_iqr'],
                            'propose_ms': step['propose_ms']}
    if progress is not None:
      progress.update()
  return {'prefill_steps': init / step_s, 'c_by_gamma': by_gamma}


def loop_configs(target: str, costs_c: Mapping[str, float] | None = None,
                 curve: Sequence[float] | None = None) -> list[dict[str, Any]]:
  """Every (row, γ choice, draft) to run: the paper's γ, and γ* when `curve` is known.

  `costs_c`: draft shape -> c (to choose γ* with the draft step); γ* without a
  draft step uses c = 0.
  """
  configs = []
  for index, row in enumerate(table2_greedy_rows()):
    for draft in (None, draft_shape(target, row['mq'])):
      if draft is None and configs and configs[-1]['row'] == index and configs[-1]['draft'] is None:
        continue  # the row has no draft smaller than the target: the loop without it once
      configs.append(dict(row=index, **row, draft=draft, gamma_choice='paper'))
      if curve is not None:
        c = 0.0 if draft is None else (costs_c or {}).get(draft, 0.0)
        # Scoring more positions never costs less: choosing on the running maximum keeps a
        # noisy dip of the measured curve from picking γ (the theory still uses the curve).
        best = theory.optimal_gamma(row['alpha'], c, max_gamma=len(curve) - 1,
                                    scoring_cost=np.maximum.accumulate(curve))
        if best.gamma != row['gamma']:
          configs.append(dict(configs[-1], gamma=best.gamma, gamma_choice='optimal'))
  return configs


def config_key(config: Mapping[str, Any]) -> str:
  """Configs that decode identically share one timing: α, γ and draft."""
  return f"a{config['alpha']:.2f}-g{config['gamma']}-{config['draft'] or 'none'}"


def _acceptance(outputs: Sequence[decoding.SpeculativeOutput], gamma: int) -> dict[str, float]:
  """Pooled over the requests: realised α, tokens per iteration, full-block share."""
  get = lambda name: np.concatenate([np.asarray(getattr(o, name)) for o in outputs])
  count, beta = get('beta_count'), get('beta_mean')
  iterations = get('iterations')
  return {'alpha_realised': float(np.sum(beta * count) / max(np.sum(count), 1)),
          'beta_count': int(np.sum(count)),
          'accepted': int(np.sum(get('accepted'))), 'iterations': int(np.sum(iterations)),
          'tokens_per_iteration': float(np.sum(get('lengths')) / np.sum(iterations)),
          'gamma': gamma}


def run_loops(module: Any, params: Any, configs: Sequence[Mapping[str, Any]],
              drafts: Mapping[str, tuple[Any, Any]], inputs: np.ndarray, reference: np.ndarray,
              settings: Mapping[str, Any], progress: Any = None) -> dict[str, Any]:
  """Autoregressive and every distinct config over the same inputs, in interleaved rounds.

  Returns:
    `{'autoregressive_s': [rounds], 'loops': key -> {samples_s, speed..., acceptance, exact}}`.
  """
  length = settings['max_decode_len']
  encoders = [jnp.asarray(row[None]) for row in inputs]
  vocab = module.config.vocab_size
  unique = {config_key(c): c for c in configs}
  models = {shape: drafters.ModelDrafter(*pair) for shape, pair in drafts.items()}

  def autoregressive():
    return [decoding.autoregressive_decode(module, params, e, max_decode_len=length)
            for e in encoders]

  def speculative(config):
    model = models.get(config['draft'])
    return [decoding.speculative_decode(
        module, params, controlled.controlled_drafter(reference[i:i + 1], config['alpha'], vocab,
                                                      model),
        e, gamma=config['gamma'], max_decode_len=length,
        rng=jax.random.PRNGKey(settings['seed'] + i)) for i, e in enumerate(encoders)]

  runs = {'autoregressive': autoregressive}
  runs.update({key: functools.partial(speculative, config) for key, config in unique.items()})
  last = {name: jax.block_until_ready(run()) for name, run in runs.items()}  # compiles
  timed_runs = {name: functools.partial(lambda name: timing.timed(runs[name])[0], name)
                for name in runs}
  samples = timing.interleaved_rounds(timed_runs, settings['rounds'], settings['seed'], progress)
  ratios = timing.paired_ratios(samples, 'autoregressive')
  loops = {}
  for key, config in unique.items():
    speed = 1.0 / ratios[key]
    exact = all(np.array_equal(np.asarray(o.tokens), reference[i:i + 1])
                for i, o in enumerate(last[key]))
    loops[key] = {'samples_s': samples[key], 'speed': float(np.median(speed)),
                  'speed_iqr': [float(np.quantile(speed, 0.25)), float(np.quantile(speed, 0.75))],
                  'exact': bool(exact), **_acceptance(last[key], config['gamma'])}
  return {'autoregressive_s': samples['autoregressive'], 'loops': loops}


def row_result(config: Mapping[str, Any], loop: Mapping[str, Any], costs: Mapping[str, Any],
               max_decode_len: int) -> dict[str, Any]:
  """One reported row: the measurement next to the theories and the paper."""
  gamma, draft = config['gamma'], config['draft']
  curve = costs['scoring_curve']
  c = 0.0 if draft is None else costs['drafts'][draft]['c_by_gamma'][str(gamma)]['c']
  draft_prefill = 0.0 if draft is None else costs['drafts'][draft]['prefill_steps']
  scoring = curve[gamma]
  alpha = loop['alpha_realised']
  formula = float(theory.walltime_improvement_measured(alpha, gamma, c, scoring))
  request = request_theory(alpha, gamma, c, scoring, max_decode_len, costs['prefill_steps'],
                           draft_prefill)
  return {
      **{k: config[k] for k in ('task', 'mq', 'alpha', 'gamma', 'gamma_choice', 'draft',
                                'paper_speed')},
      'c': c, 'scoring_cost': scoring, 'alpha_realised': alpha,
      'tokens_per_iteration': loop['tokens_per_iteration'],
      'expected_tokens_per_iteration': float(theory.expected_tokens_per_iteration(alpha, gamma)),
      'speed': loop['speed'], 'speed_iqr': loop['speed_iqr'], 'exact': loop['exact'],
      'theory': formula, 'measured_over_theory': loop['speed'] / formula,
      'theory_paper_alpha': float(theory.walltime_improvement_measured(
          config['alpha'], gamma, c, scoring)),
      'theory_request': request, 'measured_over_theory_request': loop['speed'] / request,
  }


def within(value: float, tolerance: float = 0.1) -> bool:
  return math.isfinite(value) and abs(value - 1.0) <= tolerance


def _inputs(vocab: int, count: int, encoder_length: int, seed: int) -> np.ndarray:
  """`[count, L]` random encoder token ids in [2, vocab) (no padding)."""
  return np.random.default_rng(seed).integers(2, vocab, (count, encoder_length)).astype(np.int32)


def measure_target(target: str, settings: Mapping[str, Any],
                   progress: Any = None) -> dict[str, Any]:
  """Costs, then the loop at every T=0 Table 2 row, for one target shape.

  Args:
    target: a `SHAPES` or `QUICK_SHAPES` name.
    settings: dtype, encoder_length, max_decode_len, inputs, rounds, sample_ms, seed, and
      optimal_gamma (default True: also run the γ the measured costs make optimal).
    progress: optional tqdm-like object (`update()`, `set_description()`).
  """
  dtype, seed = settings['dtype'], settings['seed']
  module, params = build_model(target, dtype, settings['encoder_length'], seed)
  inputs = _inputs(module.config.vocab_size, settings['inputs'], settings['encoder_length'], seed)
  reference = np.concatenate([np.asarray(decoding.autoregressive_decode(
      module, params, jnp.asarray(row[None]), max_decode_len=settings['max_decode_len']).tokens)
      for row in inputs])
  paper_configs = loop_configs(target)
  shapes = sorted({c['draft'] for c in paper_configs if c['draft']}, key=family_of(target).index)
  drafts = {shape: build_model(shape, dtype, settings['encoder_length'], seed + 1 + i)
            for i, shape in enumerate(shapes)}
  if progress is not None:
    progress.set_description(f'{target}: costs')
  paper_gammas = {s: [c['gamma'] for c in paper_configs if c['draft'] == s] for s in shapes}
  costs = measure_costs(module, params, drafts, paper_gammas, inputs, reference, settings,
                        progress)
  c_paper = {s: float(np.median([v['c'] for v in costs['drafts'][s]['c_by_gamma'].values()]))
             for s in shapes}
  configs = loop_configs(target, c_paper,
                         costs['scoring_curve'] if settings.get('optimal_gamma', True) else None)
  missing = {s: [c['gamma'] for c in configs if c['draft'] == s
                 and str(c['gamma']) not in costs['drafts'][s]['c_by_gamma']] for s in shapes}
  for s in shapes:
    if missing[s]:
      extra = draft_costs(module, params, *drafts[s], missing[s], inputs, reference, settings,
                          costs['target_step_ms'] / 1e3, progress)
      costs['drafts'][s]['c_by_gamma'].update(extra['c_by_gamma'])
  timing.release_compiled_programs()  # the loops below compile one program per row: make room
  if progress is not None:
    progress.set_description(f'{target}: loops')
  loops = run_loops(module, params, configs, drafts, inputs, reference, settings, progress)
  rows = [row_result(c, loops['loops'][config_key(c)], costs, settings['max_decode_len'])
          for c in configs]
  # The step inside the jitted autoregressive loop, against the chained step of the costs.
  costs['autoregressive_step_ms_in_loop'] = 1e3 * float(np.median(loops['autoregressive_s'])) / (
      len(inputs) * settings['max_decode_len'])
  return {'target': target, 'config': network_summary(module, params), 'costs': costs,
          'autoregressive_s': loops['autoregressive_s'], 'rows': rows,
          'draft_configs': {s: network_summary(*drafts[s]) for s in shapes}}


def network_summary(module: Any, params: Any) -> dict[str, Any]:
  """The shape facts a report names: layers, widths, parameter counts."""
  config = module.config
  return {'emb_dim': config.emb_dim, 'num_heads': config.num_heads, 'mlp_dim': config.mlp_dim,
          'num_decoder_layers': config.num_decoder_layers, 'vocab_size': config.vocab_size,
          'dtype': jnp.dtype(config.dtype).name,
          'params': int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
          'decoder_params': int(random_weights.decoder_param_count(params))}


def progress_total(targets: Sequence[str], rounds: int, cost_rounds: int) -> int:
  """Progress-bar steps of `measure_target` over `targets` (approximate: configs vary)."""
  total = 0
  for target in targets:
    configs = loop_configs(target)
    total += cost_rounds * len(KS) + rounds * (1 + 2 * len({config_key(c) for c in configs}))
    total += len({(c['draft'], c['gamma']) for c in configs if c['draft']})
  return total
