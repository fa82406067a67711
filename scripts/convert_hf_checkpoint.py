#!/usr/bin/env python
"""Converts a Hugging Face T5 directory into a T5X checkpoint for t5x.infer and the sweep.

The directory is what `save_pretrained` writes (or a Hub snapshot): config.json and
model.safetensors or pytorch_model.bin (sharded *.index.json too) of a
T5ForConditionalGeneration, T5 1.1 / Flan-T5 (gated-gelu, untied lm_head) or T5 1.0.
It writes into OUT_DIR:

  checkpoint_<step>/   the T5X Orbax checkpoint (float32 parameters)
  train_config.json    the T5Config: the sweep and the drafter registry find it beside the
                       checkpoint, so a sweep models entry needs no "preset"
  draft.gin            DRAFT_CHECKPOINT + DRAFT_CONFIG: this model as the draft in t5x.infer
  model.gin            MODEL: this model as the target in t5x.infer (spiece.model copied
                       beside it when the Hugging Face directory has one)

Example (a draft for a T5 1.1 / Flan-T5 target, checked to share its vocabulary):

  JAX_PLATFORMS=cpu .venv/bin/python scripts/convert_hf_checkpoint.py \\
      ~/hf/flan-t5-small /ckpt/flan_t5_small --target t5_1_1_xxl
  python -m t5x.infer --gin_file=t5x/examples/t5/t5_1_1/xxl.gin \\
      --gin_file=t5x/configs/runs/infer.gin --gin_file=gin/speculative.gin \\
      --gin_file=/ckpt/flan_t5_small/draft.gin --gin.GAMMA=5 ...
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Sequence

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax.numpy as jnp  # noqa: E402

from specdec_t5x import hf_checkpoint  # noqa: E402


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
  """Shows the module docstring as written, and every option's default."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
  parser.add_argument('hf_dir', type=pathlib.Path,
                      help='the Hugging Face model directory (config.json + weights)')
  parser.add_argument('out_dir', type=pathlib.Path, help='the T5X model directory to write')
  parser.add_argument('--step', type=int, default=0, help='the step of checkpoint_<step>')
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                      help='the dtype the written configs compute in (parameters stay float32)')
  parser.add_argument('--target', default=None,
                      help='check that the model can draft for this target: a preset name '
                           '(e.g. t5_1_1_xxl), a T5X checkpoint or a Hugging Face directory')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace an existing checkpoint_<step>')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    converted = hf_checkpoint.convert_hf_checkpoint(
        args.hf_dir, args.out_dir, step=args.step, dtype=jnp.dtype(args.dtype),
        target=args.target, overwrite=args.overwrite)
  except (ValueError, FileExistsError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(f'config:       {converted.config}')
  print(f'checkpoint:   {converted.checkpoint}')
  print(f'train config: {converted.train_config}')
  print(f'draft gin:    {converted.draft_gin}')
  print(f'model gin:    {converted.model_gin}')
  print('\nAs the draft in t5x.infer (after the target\'s model gin and infer.gin):')
  print(f'  --gin_file=gin/speculative.gin --gin_file={converted.draft_gin} --gin.GAMMA=5')
  print('As the target in t5x.infer:')
  print(f'  --gin_file={converted.model_gin} --gin_file=t5x/configs/runs/infer.gin '
        f'--gin.CHECKPOINT_PATH="\'{converted.checkpoint}\'"')
  print('In a sweep config (no preset: train_config.json is read):')
  print(f'  "models": {{"<name>": {{"checkpoint": "{converted.checkpoint}"}}}}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
