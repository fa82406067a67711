#!/usr/bin/env python
"""Evaluates a trained family: greedy BLEU on EnDe, ROUGE on summarisation, validation loss.

For every model of the family (trained by scripts/train_family.py) and for a copy-the-input
baseline (the output is the input without its task prefix):

* greedy decoding with `specdec_t5x.decoding.autoregressive_decode`, batched, on the first
  `--num-examples` examples of each task's test split (a fixed subset, in the stored order),
  inputs and decode length at the tasks' default feature lengths;
* BLEU and chrF (sacrebleu, default 13a tokenisation) against the German references of
  `ddtp_ende`; ROUGE-1/2/L F1 (rouge-score, Porter stemming) against the synopses of
  `ddtp_summarize`;
* validation loss: mean cross-entropy per target token (nats) on the first
  `--validation-examples` examples of each task's validation split, unpacked.

Writes results/models.md and results/models.json (`models.<family>.*` for families other than
`default`), including the training times and sizes that train_family.py recorded, and checks
that the target beats every draft and every model beats copy-the-input.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import pathlib
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import numpy as np  # noqa: E402
import sacrebleu  # noqa: E402
import train_family  # noqa: E402  (scripts/ is on sys.path when this file runs)
from rouge_score import rouge_scorer  # noqa: E402
from tqdm import tqdm  # noqa: E402

from specdec_t5x import checkpoints, decoding, network, training  # noqa: E402
from specdec_t5x.paths import cache_dir, repo_root  # noqa: E402

COPY_BASELINE = 'copy-input'
ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeL')
NUM_SAMPLES_SHOWN = 2


# ---------------------------------------------------------------------------------------------
# Metrics (pure functions of strings).


def strip_prefix(text: str, prefix: str) -> str:
  """`text` without its task prefix (`'translate English to German: '`, `'summarize: '`)."""
  if not text.startswith(prefix):
    raise ValueError(f'input does not start with the task prefix {prefix!r}: {text[:60]!r}')
  return text[len(prefix):]


def bleu_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU and chrF (0-100) of hypotheses against one reference each."""
  if len(hypotheses) != len(references) or not references:
    raise ValueError(f'need as many hypotheses as references (and some), got '
                     f'{len(hypotheses)} and {len(references)}')
  return {'bleu': sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score,
          'chrf': sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score}


def rouge_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Mean ROUGE-1/2/L F1 (0-100) over examples, with rouge-score's Porter stemmer."""
  if len(hypotheses) != len(references) or not references:
    raise ValueError(f'need as many hypotheses as references (and some), got '
                     f'{len(hypotheses)} and {len(references)}')
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
  scores = [scorer.score(reference, hypothesis)
            for reference, hypothesis in zip(references, hypotheses, strict=True)]
  return {name: 100.0 * float(np.mean([score[name].fmeasure for score in scores]))
          for name in ROUGE_TYPES}


# ---------------------------------------------------------------------------------------------
# Decoding and losses.


def tokens_to_texts(tokens: np.ndarray, lengths: np.ndarray, vocabulary, eos_id: int = 1
                    ) -> list[str]:
  """Detokenised rows of `tokens [batch, T]`, each cut at `lengths` and without its EOS."""
  texts = []
  for row, length in zip(np.asarray(tokens), np.asarray(lengths), strict=True):
    ids = [int(t) for t in row[:int(length)]]
    if ids and ids[-1] == eos_id:
      ids = ids[:-1]
    texts.append(vocabulary.decode(ids))
  return texts


def greedy_texts(module: network.Transformer, params: Any, inputs: np.ndarray,
                 max_decode_len: int, batch_size: int, vocabulary, desc: str) -> list[str]:
  """Greedy outputs for `inputs [n, length]`, decoded `batch_size` rows at a time.

  The last batch is filled up with copies of its last row, so every call has one shape and
  compiles once.
  """
  texts = []
  for start in tqdm(range(0, len(inputs), batch_size), desc=desc, unit='batch', leave=False):
    batch = inputs[start:start + batch_size]
    real = len(batch)
    if real < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - real, axis=0)])
    output = decoding.autoregressive_decode(module, params, batch,
                                            max_decode_len=max_decode_len)
    texts += tokens_to_texts(np.asarray(output.tokens)[:real], np.asarray(output.lengths)[:real],
                             vocabulary)
  return texts


def validation_loss(params: Any, config: network.T5Config, task: str, num_examples: int,
                    batch_size: int) -> float:
  """Cross-entropy per target token on the first `num_examples` of `task`'s validation split."""
  from specdec_t5x.data import tasks

  batch_size = min(batch_size, num_examples)
  batches = tasks.iter_train_batches(task, batch_size, split='validation', shuffle=False,
                                     num_epochs=1)
  # Whole batches only: up to `batch_size - 1` of the `num_examples` may be left out.
  return training.evaluate_loss(params, config,
                                itertools.islice(batches, num_examples // batch_size))


# ---------------------------------------------------------------------------------------------
# The report.


def task_examples(task: str, split: str, num_examples: int) -> dict[str, Any]:
  from specdec_t5x.data import tasks

  return tasks.get_eval_examples(task, split, num_examples)


def evaluate_outputs(task_kind: str, hypotheses: Sequence[str], references: Sequence[str]
                     ) -> dict[str, float]:
  return (bleu_scores(hypotheses, references) if task_kind == 'translation'
          else rouge_scores(hypotheses, references))


def quality_checks(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Whether the target beats every draft and every model beats copy-the-input.

  Compared on EnDe BLEU and summarisation ROUGE-L (higher is better); each check records
  both numbers.
  """
  by_name = {row['name']: row for row in rows}
  target = next(row for row in rows if row['role'] == train_family.TARGET_ROLE)
  models = [row for row in rows if row['role'] in (train_family.TARGET_ROLE,
                                                    train_family.DRAFT_ROLE)]
  comparisons = [(target, row) for row in models if row is not target]
  comparisons += [(row, by_name[COPY_BASELINE]) for row in models]
  checks = []
  for task, metric in (('ende', 'bleu'), ('summarize', 'rougeL')):
    for better, worse in comparisons:
      values = [better[task][metric], worse[task][metric]]
      checks.append({'claim': f'{better["name"]} > {worse["name"]} on {task} {metric}',
                     'values': values, 'passed': bool(values[0] > values[1])})
  return checks


def shorten(text: str, limit: int = 300) -> str:
  return text if len(text) <= limit else text[:limit] + ' ...'


def _fmt(value: Any, digits: int = 2) -> str:
  if value is None:
    return '–'
  if isinstance(value, float):
    return f'{value:.{digits}f}'
  return str(value)


def render_markdown(report: Mapping[str, Any], notes: Sequence[str]) -> str:
  """results/models.md from the report dictionary (see `main`)."""
  rows = report['models']
  lines = [f'# The `{report["family"]}` model family: sizes, training, quality', '']
  lines += [f'Commands: `{report["train_command"]}` then `{report["command"]}`  ',
            f'Date: {report["date"]} (evaluation took {report["eval_seconds"] / 60:.1f} min)  ',
            f'Machine: {report["machine"]}.', '']
  lines += [f'Data: mixture `{report["mixture"]}` (DDTP EnDe + summarisation, equal rates). '
            f'Quality on the first {report["num_examples"]} examples of each task\'s '
            f'`{report["split"]}` split, greedy; validation loss on the first '
            f'{report["validation_examples"]} validation examples of each task (nats per target '
            'token).', '']
  lines += ['| model | role | architecture | params | target/this | steps | batch | train min '
            '| s/step | final train loss | val loss EnDe | val loss summ | BLEU | chrF '
            '| ROUGE-1 | ROUGE-2 | ROUGE-L |',
            '|' + '---|' * 17]
  target_params = next(r['num_params'] for r in rows if r['role'] == 'target')
  for row in rows:
    trained = row['role'] != 'baseline'
    lines.append('| ' + ' | '.join([
        row['name'], row['role'], row.get('architecture', 'output = input minus prefix'),
        f'{row["num_params"] / 1e6:.1f}M' if trained else '–',
        f'{target_params / row["num_params"]:.1f}x' if trained else '–',
        _fmt(row.get('num_steps')), _fmt(row.get('batch_size')),
        _fmt(row['train_seconds'] / 60, 1) if trained else '–',
        _fmt(row.get('seconds_per_step')), _fmt(row.get('final_train_loss'), 3),
        _fmt(row['ende'].get('validation_loss'), 3),
        _fmt(row['summarize'].get('validation_loss'), 3),
        _fmt(row['ende']['bleu']), _fmt(row['ende']['chrf']),
        _fmt(row['summarize']['rouge1']), _fmt(row['summarize']['rouge2']),
        _fmt(row['summarize']['rougeL'])]) + ' |')
  total = sum(row['train_seconds'] for row in rows if row['role'] != 'baseline')
  lines += ['', f'Total training time: {total / 60:.1f} min (sum of the models\' `train_seconds`,'
            ' compilation excluded; load average while training is in training.json).', '']
  lines += ['## Checks', '']
  for check in report['checks']:
    mark = 'PASS' if check['passed'] else 'FAIL'
    lines.append(f'- {mark}: {check["claim"]} ({check["values"][0]:.2f} vs '
                 f'{check["values"][1]:.2f})')
  lines += ['', '## Sample outputs (first examples of the test split)', '']
  for task, samples in report['samples'].items():
    for sample in samples:
      lines += [f'- **{task}** input: {shorten(sample["input"])!r}',
                f'  - reference: {shorten(sample["reference"])!r}']
      lines += [f'  - {name}: {shorten(text)!r}' for name, text in sample['outputs'].items()]
  if notes:
    lines += [''] + list(notes)
  return '\n'.join(lines) + '\n'


def family_notes(family: Mapping[str, Any], config_path: pathlib.Path) -> list[str]:
  """Lines of the family's `notes_file` (markdown, relative to the configuration), if any."""
  if 'notes_file' not in family:
    return []
  path = config_path.parent / family['notes_file']
  if not path.is_file():
    raise ValueError(f'notes_file {path} of the family configuration does not exist')
  return path.read_text().rstrip('\n').split('\n')


def output_paths(results_dir: pathlib.Path, family_name: str) -> tuple[pathlib.Path, ...]:
  stem = 'models' if family_name == 'default' else f'models.{family_name}'
  return results_dir / f'{stem}.md', results_dir / f'{stem}.json'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--family', default='default',
                      help='family to evaluate (default: %(default)s; also "miniature")')
  parser.add_argument('--config', type=pathlib.Path, default=train_family.DEFAULT_CONFIG,
                      help='family configuration JSON (default: %(default)s)')
  parser.add_argument('--num-examples', type=int, default=None,
                      help='test examples per task (default: the family\'s eval.num_examples)')
  parser.add_argument('--validation-examples', type=int, default=None,
                      help='validation examples per task for the loss (default: the family\'s '
                           'eval.validation_examples)')
  parser.add_argument('--batch-size', type=int, default=None,
                      help='decoding batch size (default: the family\'s eval.batch_size)')
  parser.add_argument('--split', default=None,
                      help='split decoded for BLEU/ROUGE (default: the family\'s eval.split)')
  parser.add_argument('--results-dir', type=pathlib.Path, default=repo_root() / 'results',
                      help='where models.md / models.json go (default: %(default)s)')
  parser.add_argument('--strict', action='store_true',
                      help='exit with status 1 if a quality check fails')
  parser.add_argument('--report-only', action='store_true',
                      help='decode nothing: rewrite models.md from the stored models.json and '
                           'the family\'s current notes file')
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  started = time.perf_counter()
  try:
    family = train_family.load_family(args.family, args.config)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.report_only:
    md_path, json_path = output_paths(args.results_dir, args.family)
    if not json_path.is_file():
      print(f'error: {json_path} not found; run without --report-only first', file=sys.stderr)
      return 2
    md_path.write_text(render_markdown(json.loads(json_path.read_text()),
                                       family_notes(family, args.config)))
    print(f'wrote {md_path}')
    return 0
  settings = dict(family['eval'])
  for key in ('num_examples', 'validation_examples', 'batch_size', 'split'):
    if getattr(args, key) is not None:
      settings[key] = getattr(args, key)
  if min(settings['num_examples'], settings['validation_examples'], settings['batch_size']) < 1:
    print(f'error: example counts and batch size must be >= 1, got {settings}', file=sys.stderr)
    return 2
  summary_path = train_family.models_dir(args.family) / train_family.TRAINING_SUMMARY
  if not summary_path.is_file():
    print(f'error: {summary_path} not found; train the family first: '
          f'scripts/train_family.py --family {args.family}', file=sys.stderr)
    return 2
  trained = {row['name']: row for row in json.loads(summary_path.read_text())['models']}
  missing = [m['name'] for m in family['models'] if m['name'] not in trained]
  if missing:
    print(f'error: models {missing} of family {args.family!r} are not trained yet; run '
          f'scripts/train_family.py --family {args.family}', file=sys.stderr)
    return 2

  from specdec_t5x.data import tasks

  jax.config.update('jax_compilation_cache_dir', str(cache_dir('jax_compilation_cache')))
  task_specs = {'ende': (tasks.DDTP_ENDE, tasks.ENDE_PREFIX, 'translation'),
                'summarize': (tasks.DDTP_SUMMARIZE, tasks.SUMMARIZE_PREFIX, 'summarization')}
  examples = {key: task_examples(task, settings['split'], settings['num_examples'])
              for key, (task, _, _) in task_specs.items()}
  references = {key: ex['targets_pretokenized'] for key, ex in examples.items()}
  outputs: dict[str, dict[str, list[str]]] = {}

  copy_row = {'name': COPY_BASELINE, 'role': 'baseline', 'train_seconds': 0.0}
  outputs[COPY_BASELINE] = {}
  for key, (_, prefix, kind) in task_specs.items():
    outputs[COPY_BASELINE][key] = [strip_prefix(text, prefix)
                                   for text in examples[key]['inputs_pretokenized']]
    copy_row[key] = evaluate_outputs(kind, outputs[COPY_BASELINE][key], references[key])

  rows = []
  for model in family['models']:
    config = train_family.model_config(model)
    row = dict(trained[model['name']])
    params = checkpoints.load_t5x_params(row['checkpoint'], config)
    module = network.Transformer(config)
    outputs[model['name']] = {}
    for key, (task, _, kind) in task_specs.items():
      texts = greedy_texts(module, params, examples[key]['inputs'],
                           tasks.feature_lengths(task)['targets'], settings['batch_size'],
                           seqio_vocabulary(task), desc=f'{model["name"]} {key}')
      outputs[model['name']][key] = texts
      row[key] = evaluate_outputs(kind, texts, references[key])
      row[key]['validation_loss'] = validation_loss(
          params, config, task, settings['validation_examples'], settings['batch_size'])
    print(f'[{model["name"]}] EnDe BLEU {row["ende"]["bleu"]:.2f}, summarisation ROUGE-L '
          f'{row["summarize"]["rougeL"]:.2f}', flush=True)
    rows.append(row)
  rows.append(copy_row)
  print(f'[{COPY_BASELINE}] EnDe BLEU {copy_row["ende"]["bleu"]:.2f}, summarisation ROUGE-L '
        f'{copy_row["summarize"]["rougeL"]:.2f}')

  samples = {key: [{'input': examples[key]['inputs_pretokenized'][i],
                    'reference': references[key][i],
                    'outputs': {name: outputs[name][key][i] for name in outputs}}
                   for i in range(min(NUM_SAMPLES_SHOWN, settings['num_examples']))]
             for key in task_specs}
  checks = quality_checks(rows)
  report = {
      'family': args.family, 'mixture': family['mixture'],
      'command': 'JAX_PLATFORMS=cpu .venv/bin/python ' + shlex.join(
          ['scripts/evaluate_family.py'] + (argv if argv is not None else sys.argv[1:])),
      'train_command': f'JAX_PLATFORMS=cpu .venv/bin/python scripts/train_family.py '
                       f'--family {args.family}',
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'machine': f'{os.cpu_count()} CPU cores, {platform.platform()}, python '
                 f'{platform.python_version()}, jax {jax.__version__}',
      'split': settings['split'], 'num_examples': settings['num_examples'],
      'validation_examples': settings['validation_examples'],
      'models': rows, 'checks': checks, 'samples': samples,
      'eval_seconds': time.perf_counter() - started,
  }
  md_path, json_path = output_paths(args.results_dir, args.family)
  args.results_dir.mkdir(parents=True, exist_ok=True)
  json_path.write_text(json.dumps(report, indent=2) + '\n')
  md_path.write_text(render_markdown(report, family_notes(family, args.config)))
  failed = [check['claim'] for check in checks if not check['passed']]
  print(f'wrote {md_path} and {json_path}; checks: {len(checks) - len(failed)}/{len(checks)} '
        'passed' + (f'; FAILED: {failed}' if failed else ''))
  return 1 if failed and args.strict else 0


def seqio_vocabulary(task: str):
  """The targets vocabulary of a registered seqio task."""
  import seqio

  return seqio.get_mixture_or_task(task).output_features['targets'].vocabulary


if __name__ == '__main__':
  sys.exit(main())
