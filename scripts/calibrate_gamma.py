"""Measures the cost profile gamma='auto' chooses γ from, and saves it as a JSON file.

`speculative_decode(gamma='auto')` measures (and caches) a profile itself
when it is called outside jit. Under T5X (`python -m t5x.infer` with
gin/speculative.gin and GAMMA='auto') the prediction step is traced, so the
profile must be measured beforehand, with this script, on the same machine,
for the same models, batch size and lengths, and given as COST_PROFILE.

The profile is one loop iteration at each γ ∈ {0..max_gamma} over one at
γ = 0 (a plain target step), timed on the loop itself (the cost does not
depend on the input tokens' values); see `specdec_t5x.calibration`. With
--task it is measured on that seqio task's inputs (--split, default
validation), and the acceptance rate α the draft reaches on them is saved
too: requests start from it instead of the bare prior α = 0.5. Without
--task the inputs are random tokens and no α is saved.

Example (T5 1.1 XXL with a T5 1.1 small draft, bfloat16, batch 8):

  python scripts/calibrate_gamma.py \\
    --target-checkpoint gs://.../t5_xxl/checkpoint_1000000 --target-config t5_1_1_xxl \\
    --draft-checkpoint gs://.../t5_small/checkpoint_1000000 --draft-config t5_1_1_small \\
    --dtype bfloat16 --batch 8 --input-length 512 --max-decode-len 128 \\
    --task my_tasks.wmt_ende --import my_tasks --output /tmp/xxl_small_b8.json
  python -m t5x.infer ... --gin_file=gin/speculative.gin --gin.GAMMA="'auto'" \\
    --gin.COST_PROFILE="'/tmp/xxl_small_b8.json'"
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from specdec_t5x import calibration, checkpoints, drafters, network
from specdec_t5x import sampling as sampling_lib


def _model(checkpoint: str, preset: str, dtype: str) -> tuple[network.Transformer, dict]:
  config = network.config_from_preset(preset, dtype=jnp.dtype(dtype))
  return network.Transformer(config), checkpoints.load_t5x_params(checkpoint, config)


def _inputs(args: argparse.Namespace, vocab_size: int) -> np.ndarray:
  """`[batch, input_length]` ids: the task's first inputs of the split, or random tokens."""
  if args.task is None:
    rng = np.random.default_rng(0)
    return rng.integers(2, vocab_size, (args.batch, args.input_length))
  for module in args.imports:
    importlib.import_module(module)
  from specdec_t5x.data import tasks as tasks_lib  # registers the DDTP tasks; needs TensorFlow

  lengths = {'inputs': args.input_length, 'targets': args.max_decode_len}
  return tasks_lib.get_eval_examples(args.task, args.split, args.batch, lengths)['inputs']


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--target-checkpoint', required=True, help='T5X checkpoint of the target')
  parser.add_argument('--target-config', required=True, choices=sorted(network.PRESETS),
                      help="the target's preset")
  parser.add_argument('--draft-checkpoint', required=True, help='T5X checkpoint of the draft')
  parser.add_argument('--draft-config', required=True, choices=sorted(network.PRESETS),
                      help="the draft's preset")
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                      help='compute dtype of both models (default: %(default)s)')
  parser.add_argument('--batch', type=int, default=1, help='rows per call (default: 1)')
  parser.add_argument('--input-length', type=int, required=True,
                      help='encoder input length of the calls (the feature length)')
  parser.add_argument('--max-decode-len', type=int, required=True, help='decoder length')
  parser.add_argument('--max-gamma', type=int, default=8, help='largest γ (default: 8)')
  parser.add_argument('--temperature', type=float, default=0.0)
  parser.add_argument('--top-k', type=int, default=0)
  parser.add_argument('--top-p', type=float, default=1.0)
  parser.add_argument('--task', help='a seqio task whose inputs to measure on (and α from); '
                      "specdec_t5x.data.tasks's are registered (e.g. ddtp_ende); "
                      'default: random tokens, no α')
  parser.add_argument('--split', default='validation', help="the task's split (default: "
                      '%(default)s; keep the test split for evaluation)')
  parser.add_argument('--import', dest='imports', action='append', default=[], metavar='MODULE',
                      help='a module to import first, e.g. the one registering --task')
  parser.add_argument('--eos-id', type=int, default=1, help='the id that ends a row (default 1)')
  parser.add_argument('--output', required=True, help='where to write the profile (JSON)')
  args = parser.parse_args(argv)

  target, target_params = _model(args.target_checkpoint, args.target_config, args.dtype)
  draft, draft_params = _model(args.draft_checkpoint, args.draft_config, args.dtype)
  tokens = _inputs(args, target.config.vocab_size)
  profile = calibration.measure_profile(
      target, target_params, drafters.ModelDrafter(draft, draft_params),
      jnp.asarray(tokens, jnp.int32), max_gamma=args.max_gamma,
      max_decode_len=args.max_decode_len,
      sampling=sampling_lib.make_sampling_config(args.temperature, args.top_k, args.top_p),
      eos_id=args.eos_id)
  if args.task is None:  # random tokens say nothing of how often the draft agrees
    profile = dataclasses.replace(profile, alpha=None, alpha_positions=0.0)
  profile.save(args.output)
  costs = ', '.join(f'{g}: {c:.2f}' for g, c in enumerate(profile.iteration_cost))
  print(f'iteration cost over a plain step by γ: {costs}')
  print(f"the draft's first use in a request: {profile.start_cost:.2f} plain steps")
  if profile.alpha is not None:
    print(f'α on {args.task}/{args.split}: {profile.alpha:.3f} over '
          f'{profile.alpha_positions:.0f} verified positions (the prior of requests)')
  print(f"measured in {profile.details['measure_s']} s after {profile.details['compile_s']} s "
        f'of compilation; wrote {args.output}')


if __name__ == '__main__':
  main()
