"""Which distillation buys the most acceptance per step: a short, resumable comparison.

From one trained draft of a family, each arm spends the same `num_steps` on the
same training batches (those after the draft's own): 'ce' continues the draft's
ordinary training (cross-entropy on the references), every other arm distils
towards the target with one of `distill.DIVERGENCES`. Each arm is scored by the
teacher-forced acceptance proxies of `distill.agreement` (T = 0: the draft's
argmax is the target's; T = 1: β = Σ min(p, q)) on validation examples of each
task, next to the draft it started from, with the seconds per step it cost.

Runs live in `$SPECDEC_CACHE_DIR/models/<family>/compare/<draft>-<arm>-<steps>/`, so a
killed comparison continues where it stopped.
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from specdec_t5x import checkpoints
from specdec_t5x.training import distill, family, family_runs, generated, loop, models

CE_ARM = 'ce'
TASKS = ('ddtp_ende', 'ddtp_summarize')
# Scores on the target's own greedy outputs for the validation inputs: the
# prefixes greedy speculative decoding meets, so their argmax agreement is α at T = 0.
OWN = '@target_greedy'


def arm_settings(arm: str) -> distill.DistillSettings:
  """The distillation of an arm named `divergence` or `divergence@data` (e.g. 'fkl@target_greedy').

  Raises:
    ValueError: an unknown divergence or data source.
  """
  divergence, _, data = arm.partition('@')
  return distill.DistillSettings(divergence, data=data or 'references')


def validation_batches(task: str, num_examples: int, batch_size: int) -> list[dict[str, Any]]:
  """The first `num_examples // batch_size` unpacked validation batches of `task`."""
  from specdec_t5x.data import tasks

  batches = tasks.iter_train_batches(task, batch_size, split='validation', shuffle=False,
                                     num_epochs=1)
  return list(itertools.islice(batches, max(1, num_examples // batch_size)))


def _continue_training(family_name: str, fam: Mapping[str, Any], draft: Mapping[str, Any],
                       workdir, num_steps: int, make_batches, progress: bool) -> Any:
  """The 'ce' arm: the draft's own run, copied and trained `num_steps` further."""
  source = family.model_dir(family_name, draft['name'])
  state_dir = workdir / loop.TRAIN_STATE_DIR / str(draft['num_steps'])
  if not state_dir.exists():
    shutil.copytree(source / loop.TRAIN_STATE_DIR / str(draft['num_steps']), state_dir)
    shutil.copy(source / loop.RUN_CONFIG_FILE, workdir / loop.RUN_CONFIG_FILE)
  return models.train(family.model_config(draft), make_batches,
                      draft['num_steps'] + num_steps, workdir,
                      hparams=family.train_hparams(fam), save_every=fam['save_every'],
                      progress=progress, desc=f'{draft["name"]}+{CE_ARM}')


def run_arm(family_name: str, fam: Mapping[str, Any], draft: Mapping[str, Any],
            teacher: distill.Teacher, arm: str, num_steps: int, *,
            progress: bool = True) -> tuple[Any, float]:
  """Trains one arm (resumably); returns its T5X checkpoint and seconds per step."""
  workdir = family.models_dir(family_name) / 'compare' / f'{draft["name"]}-{arm}-{num_steps}'
  workdir.mkdir(parents=True, exist_ok=True)
  if arm == CE_ARM:
    factory = family.make_batch_factory(family_name, fam, progress=progress)
    summary = _continue_training(family_name, fam, draft, workdir, num_steps, factory, progress)
    # The copied run's clock includes the draft's own training.
    own = models.cached_summary(family.model_dir(family_name, draft['name']), draft['num_steps'])
    return summary.checkpoint_dir, (summary.train_seconds - own.train_seconds) / num_steps
  summary = family_runs.distill_draft(family_name, fam, draft, teacher, arm_settings(arm),
                                 num_steps, workdir, progress=progress,
                                 desc=f'{draft["name"]}+{arm}')
  return summary.checkpoint_dir, summary.train_seconds / num_steps


def compare(family_name: str, fam: Mapping[str, Any], draft_name: str, arms: Sequence[str],
            num_steps: int, num_examples: int, *, batch_size: int = 32, progress: bool = True,
            log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs every arm from the family's draft `draft_name`; returns their scores.

  Returns:
    `{'draft', 'num_steps', 'validation_examples', 'rows': [{'arm', 'seconds_per_step',
    '<task>': {'argmax_agreement', 'beta', 'tokens'}}]}`; the row with arm
    'start' is the draft before any of them.
  """
  draft = next((m for m in fam['models'] if m['name'] == draft_name), None)
  if draft is None or draft['role'] != family.DRAFT_ROLE or 'distill' in draft:
    raise ValueError(f'{draft_name!r} is not an independent draft of the family')
  available = max(family.batches_needed(model, fam) for model in fam['models'])
  if draft['num_steps'] + num_steps > available:
    raise ValueError(f'the family has {available} training batches and {draft_name!r} read '
                     f'the first {draft["num_steps"]}: at most {available - draft["num_steps"]} '
                     f'further steps, got {num_steps}')
  teacher = family_runs.load_teacher(family_name, fam, f'comparing distillations of {draft_name!r}')
  batches = {task: validation_batches(task, num_examples, batch_size) for task in TASKS}
  batches.update({task + OWN: generated.generated_batches(teacher, batches[task])
                  for task in TASKS})
  config = family.model_config(draft)
  start = checkpoints.step_dir(family.model_dir(family_name, draft['name']), draft['num_steps'])
  runs = [('start', start, 0.0)]
  for arm in arms:
    started = time.perf_counter()
    runs.append((arm, *run_arm(family_name, fam, draft, teacher, arm, num_steps,
                               progress=progress)))
    log(f'[{arm}] {time.perf_counter() - started:.0f} s')
  rows = []
  for arm, path, seconds in runs:
    params = checkpoints.load_t5x_params(path, config)
    row = {'arm': arm, 'seconds_per_step': seconds}
    for task, task_batches in batches.items():
      row[task] = distill.agreement(config, params, teacher.config, teacher.params,
                                    task_batches)
    log(f'{arm:>8}: ' + ', '.join(f'{task} argmax {row[task]["argmax_agreement"]:.3f} '
                                   f'beta {row[task]["beta"]:.3f}' for task in batches))
    rows.append(row)
  return {'draft': draft_name, 'num_steps': num_steps, 'validation_examples': num_examples,
          'rows': rows}


def _scores(row: Mapping[str, Any], key: str) -> str:
  if key not in row:  # comparisons recorded before the target-own scores
    return '— | —'
  return f'{row[key]["argmax_agreement"]:.3f} | {row[key]["beta"]:.3f}'


def markdown(result: Mapping[str, Any]) -> str:
  """One table: arm, s/step, and per task the two acceptance proxies on both kinds of prefix."""
  keys = [key for task in TASKS for key in (task, task + OWN)]
  lines = [f'Draft `{result["draft"]}`, {result["num_steps"]} further steps per arm, '
           f'teacher-forced on the first {result["validation_examples"]} validation examples '
           'of each task: along their references, and along the target\'s own greedy outputs '
           f'for their inputs (`{OWN}`: the prefixes greedy decoding meets, so the argmax '
           'agreement there is α at T = 0). Arms: `ce` trains on, a divergence distils on the '
           'references, `<divergence>@target_greedy` on the target\'s greedy outputs for the '
           'training inputs.', '',
           '| arm | s/step | ' + ' | '.join(f'{k} argmax agree (α T=0) | {k} β (α T=1)'
                                           for k in keys) + ' |',
           '|---|---|' + '---|---|' * len(keys)]
  for row in result['rows']:
    cells = [_scores(row, key) for key in keys]
    lines.append(f'| {row["arm"]} | {row["seconds_per_step"]:.2f} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


__all__ = ['CE_ARM', 'TASKS', 'OWN', 'arm_settings', 'validation_batches', 'run_arm', 'compare',
           'markdown']
