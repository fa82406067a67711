"""Evaluating a trained family: greedy BLEU/chrF on EnDe, ROUGE on summarisation, validation loss.

Every model (`family_runs.train_models`) and a copy-the-input baseline (the input without its
task prefix) decode greedily (`decoding.autoregressive_decode`, batched) the first
`num_examples` test examples of each task; BLEU and chrF (sacrebleu, 13a) score EnDe,
ROUGE-1/2/L F1 (rouge-score, Porter stemming) the summaries; the validation loss is the
mean cross-entropy per target token (nats) on the first `validation_examples` validation
examples, unpacked. `evaluate_family` returns the report (results/models.json),
`render_markdown` its page (results/models.md), and `quality_checks` whether the target
beats every draft and every model beats copy-the-input. sacrebleu, rouge-score and seqio
(the `data` extra) are imported only where they are used.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import pathlib
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from specdec_t5x import checkpoints, decoding, network, paths
from specdec_t5x.training import family as family_lib
from specdec_t5x.training import models

COPY_BASELINE = 'copy-input'
ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeL')
NUM_SAMPLES_SHOWN = 2
SETTINGS_KEYS = ('num_examples', 'validation_examples', 'batch_size', 'split')


# ---------------------------------------------------------------------------------------------
# Metrics (pure functions of strings).


def strip_prefix(text: str, prefix: str) -> str:
  """`text` without its task prefix (`'translate English to German: '`, `'summarize: '`)."""
  if not text.startswith(prefix):
    raise ValueError(f'input does not start with the task prefix {prefix!r}: {text[:60]!r}')
  return text[len(prefix):]


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
  if len(hypotheses) != len(references) or not references:
    raise ValueError(f'need as many hypotheses as references (and some), got '
                     f'{len(hypotheses)} and {len(references)}')


def bleu_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU and chrF (0-100) of hypotheses against one reference each."""
  import sacrebleu

  _check_pairs(hypotheses, references)
  return {'bleu': sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score,
          'chrf': sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score}


def rouge_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Mean ROUGE-1/2/L F1 (0-100) over examples, with rouge-score's Porter stemmer."""
  from rouge_score import rouge_scorer

  _check_pairs(hypotheses, references)
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
  scores = [scorer.score(reference, hypothesis)
            for reference, hypothesis in zip(references, hypotheses, strict=True)]
  return {name: 100.0 * float(np.mean([score[name].fmeasure for score in scores]))
          for name in ROUGE_TYPES}


def evaluate_outputs(task_kind: str, hypotheses: Sequence[str], references: Sequence[str]
                     ) -> dict[str, float]:
  return (bleu_scores(hypotheses, references) if task_kind == 'translation'
          else rouge_scores(hypotheses, references))


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
  return models.evaluate_loss(params, config,
                              itertools.islice(batches, num_examples // batch_size))


def seqio_vocabulary(task: str):
  """The targets vocabulary of a registered seqio task."""
  import seqio

  return seqio.get_mixture_or_task(task).output_features['targets'].vocabulary


# ---------------------------------------------------------------------------------------------
# Checks and the page.


def quality_checks(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Whether the target beats every draft and every model beats copy-the-input.

  Compared on EnDe BLEU and summarisation ROUGE-L (higher is better); each check records
  both numbers.
  """
  by_name = {row['name']: row for row in rows}
  target = next(row for row in rows if row['role'] == family_lib.TARGET_ROLE)
  trained = [row for row in rows if row['role'] in (family_lib.TARGET_ROLE,
                                                     family_lib.DRAFT_ROLE)]
  comparisons = [(target, row) for row in trained if row is not target]
  comparisons += [(row, by_name[COPY_BASELINE]) for row in trained]
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


def _model_row(row: Mapping[str, Any], target_params: int) -> str:
  trained = row['role'] != 'baseline'
  return '| ' + ' | '.join([
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
      _fmt(row['summarize']['rougeL'])]) + ' |'


def _checks_and_samples(report: Mapping[str, Any]) -> list[str]:
  lines = ['## Checks', '']
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
  return lines


def render_markdown(report: Mapping[str, Any], notes: Sequence[str]) -> str:
  """results/models.md from the report dictionary (see `evaluate_family`)."""
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
  lines += [_model_row(row, target_params) for row in rows]
  total = sum(row['train_seconds'] for row in rows if row['role'] != 'baseline')
  lines += ['', f'Total training time: {total / 60:.1f} min (sum of the models\' `train_seconds`,'
            ' compilation excluded; load average while training is in training.json).', '']
  lines += _checks_and_samples(report)
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
  """`(models.md, models.json)`, or `models.<family>.*` for families other than `default`."""
  stem = 'models' if family_name == 'default' else f'models.{family_name}'
  return results_dir / f'{stem}.md', results_dir / f'{stem}.json'


# ---------------------------------------------------------------------------------------------
# The evaluation.


def eval_settings(family: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
  """The family's `eval` settings, with the `overrides` that are not None; checked."""
  settings = dict(family['eval'])
  settings.update({key: overrides[key] for key in SETTINGS_KEYS
                   if overrides.get(key) is not None})
  if min(settings['num_examples'], settings['validation_examples'], settings['batch_size']) < 1:
    raise ValueError(f'example counts and batch size must be >= 1, got {settings}')
  return settings


def trained_rows(family_name: str, family: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """training.json's row of every model of the family, by name; raises if one is missing."""
  summary_path = family_lib.models_dir(family_name) / family_lib.TRAINING_SUMMARY
  if not summary_path.is_file():
    raise ValueError(f'{summary_path} not found; train the family first: '
                     f'scripts/train_family.py --family {family_name}')
  trained = {row['name']: row for row in json.loads(summary_path.read_text())['models']}
  missing = [m['name'] for m in family['models'] if m['name'] not in trained]
  if missing:
    raise ValueError(f'models {missing} of family {family_name!r} are not trained yet; run '
                     f'scripts/train_family.py --family {family_name}')
  return trained


def _task_examples(settings: Mapping[str, Any]) -> tuple[dict[str, tuple], dict[str, Any]]:
  """`(task_specs, examples)`: each task's seqio name, prefix and kind, and its test examples."""
  from specdec_t5x.data import tasks

  task_specs = {'ende': (tasks.DDTP_ENDE, tasks.ENDE_PREFIX, 'translation'),
                'summarize': (tasks.DDTP_SUMMARIZE, tasks.SUMMARIZE_PREFIX, 'summarization')}
  examples = {key: tasks.get_eval_examples(task, settings['split'], settings['num_examples'])
              for key, (task, _, _) in task_specs.items()}
  return task_specs, examples


def _copy_baseline(task_specs, examples, outputs) -> dict[str, Any]:
  row = {'name': COPY_BASELINE, 'role': 'baseline', 'train_seconds': 0.0}
  outputs[COPY_BASELINE] = {}
  for key, (_, prefix, kind) in task_specs.items():
    outputs[COPY_BASELINE][key] = [strip_prefix(text, prefix)
                                   for text in examples[key]['inputs_pretokenized']]
    row[key] = evaluate_outputs(kind, outputs[COPY_BASELINE][key],
                                examples[key]['targets_pretokenized'])
  return row


def _evaluate_model(model, trained_row, settings, task_specs, examples, outputs
                    ) -> dict[str, Any]:
  """The model's row: training.json's, its checkpoint machine-free, plus each task's scores."""
  from specdec_t5x.data import tasks

  config = family_lib.model_config(model)
  row = dict(trained_row)
  checkpoint = paths.resolve_portable_path(row['checkpoint'])
  row['checkpoint'] = paths.portable_path(checkpoint)
  params = checkpoints.load_t5x_params(checkpoint, config)
  module = network.Transformer(config)
  outputs[model['name']] = {}
  for key, (task, _, kind) in task_specs.items():
    texts = greedy_texts(module, params, examples[key]['inputs'],
                         tasks.feature_lengths(task)['targets'], settings['batch_size'],
                         seqio_vocabulary(task), desc=f'{model["name"]} {key}')
    outputs[model['name']][key] = texts
    row[key] = evaluate_outputs(kind, texts, examples[key]['targets_pretokenized'])
    row[key]['validation_loss'] = validation_loss(
        params, config, task, settings['validation_examples'], settings['batch_size'])
  return row


def _samples(settings, task_specs, examples, outputs) -> dict[str, list[dict[str, Any]]]:
  return {key: [{'input': examples[key]['inputs_pretokenized'][i],
                 'reference': examples[key]['targets_pretokenized'][i],
                 'outputs': {name: outputs[name][key][i] for name in outputs}}
                for i in range(min(NUM_SAMPLES_SHOWN, settings['num_examples']))]
          for key in task_specs}


def _scores_line(row: Mapping[str, Any]) -> str:
  return (f'[{row["name"]}] EnDe BLEU {row["ende"]["bleu"]:.2f}, summarisation ROUGE-L '
          f'{row["summarize"]["rougeL"]:.2f}')


def evaluate_family(family_name: str, family: Mapping[str, Any], settings: Mapping[str, Any],
                    trained: Mapping[str, Mapping[str, Any]], *, command: str,
                    started: float | None = None,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
  """Decodes and scores every model and the copy baseline: the report of results/models.json.

  `settings` come from `eval_settings`, `trained` from `trained_rows`; `command` is recorded,
  `started` (`time.perf_counter()`, default now) times the evaluation, `log` prints scores.
  """
  started = time.perf_counter() if started is None else started
  jax.config.update('jax_compilation_cache_dir', str(paths.cache_dir('jax_compilation_cache')))
  task_specs, examples = _task_examples(settings)
  outputs: dict[str, dict[str, list[str]]] = {}
  copy_row = _copy_baseline(task_specs, examples, outputs)
  rows = []
  for model in family['models']:
    rows.append(_evaluate_model(model, trained[model['name']], settings, task_specs, examples,
                                outputs))
    log(_scores_line(rows[-1]))
  rows.append(copy_row)
  log(_scores_line(copy_row))
  return {
      'family': family_name, 'mixture': family['mixture'], 'command': command,
      'train_command': f'JAX_PLATFORMS=cpu .venv/bin/python scripts/train_family.py '
                       f'--family {family_name}',
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'machine': f'{os.cpu_count()} CPU cores, {platform.platform()}, python '
                 f'{platform.python_version()}, jax {jax.__version__}',
      'split': settings['split'], 'num_examples': settings['num_examples'],
      'validation_examples': settings['validation_examples'],
      'models': rows, 'checks': quality_checks(rows),
      'samples': _samples(settings, task_specs, examples, outputs),
      'eval_seconds': time.perf_counter() - started,
  }


def write_report(report: Mapping[str, Any], results_dir: pathlib.Path, family: Mapping[str, Any],
                 config_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes models.json, then models.md with the family's notes; returns `(md, json)`."""
  md_path, json_path = output_paths(results_dir, report['family'])
  results_dir.mkdir(parents=True, exist_ok=True)
  json_path.write_text(json.dumps(report, indent=2) + '\n')
  md_path.write_text(render_markdown(report, family_notes(family, config_path)))
  return md_path, json_path


def rewrite_markdown(results_dir: pathlib.Path, family_name: str, family: Mapping[str, Any],
                     config_path: pathlib.Path) -> pathlib.Path:
  """models.md again from the stored models.json and the family's current notes file."""
  md_path, json_path = output_paths(results_dir, family_name)
  if not json_path.is_file():
    raise ValueError(f'{json_path} not found; run without --report-only first')
  md_path.write_text(render_markdown(json.loads(json_path.read_text()),
                                     family_notes(family, config_path)))
  return md_path


__all__ = ['COPY_BASELINE', 'ROUGE_TYPES', 'strip_prefix', 'bleu_scores', 'rouge_scores',
           'evaluate_outputs', 'tokens_to_texts', 'greedy_texts', 'validation_loss',
           'seqio_vocabulary', 'quality_checks', 'render_markdown', 'family_notes',
           'output_paths', 'eval_settings', 'trained_rows', 'evaluate_family', 'write_report',
           'rewrite_markdown']
