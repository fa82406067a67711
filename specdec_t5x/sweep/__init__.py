"""Sweeps that reproduce the paper's Table 2 / Table 3 with measured speed, α, c and theory.

A sweep is described by a JSON config (`configs/sweep_*.json`, see `load_config`)
and consists of *cells*. A cell is one (section, task, draft, temperature, γ,
batch size) and measures, on the same inputs and interleaved input by input,
the jitted `speculative_decode` against the jitted `autoregressive_decode`
baseline:

* speedup: per input batch, speculative tokens/s over autoregressive tokens/s
  (at temperature 0 the outputs are identical, so this is the time ratio);
  the cell reports the median over batches, after compilation and warm-up;
* α two ways: the mean of β = Σ min(p, q) over verified positions (the paper's
  definition), pooled over rows and batches by their verified positions
  (`SpeculativeOutput.beta_count`), and `theory.alpha_from_acceptance` on the
  acceptance counts of the iterations that verified γ draft tokens;
* c: the drafter's `propose` of γ tokens / γ, over one target decoder step on
  one position, both timed as chained calls inside one jitted loop
  (`bench.timing.step_costs`);
* the scoring cost: one target call on γ+1 positions (plus the look-ahead
  positions of a PaSS drafter) over one on 1 position;
* the theory's prediction from those measured numbers, with the paper's
  formula (`theory.walltime_improvement`, scoring cost 1) and with the measured
  scoring cost (`theory.walltime_improvement_measured`).

Sections: `grid` (the Table 2 / Table 3 grid), `throughput` (tokens/s of both
decoders over batch sizes), `peer_hf` (Hugging Face assisted generation on the
same weights, `peer_hf.measure_peer`). Every finished cell is appended as one
JSON line to a `CellStore`, keyed by the cell and a fingerprint of everything
that decides its numbers, so an interrupted sweep resumes where it stopped and a
changed config re-measures only the cells it changed. `write_report` turns the
store into results/: table2.md, table3.md, peer_hf.md, projection_tpu.md,
sweep.json and PNG plots.

Drafts are built by `specdec_t5x.drafters.registry` from the config's draft
entries (kinds `model`, `unigram`, `bigram`, `pass`, and `factory` for any
builder named as `package.module:function`); a draft whose files are not made
yet raises `registry.DraftUnavailable`, and the sweep skips its cells and says why.

Modules, each importing only those above it: `config` (specs, parsing, paths),
`cells` (cells, fingerprints), `store` (the store, the plan, current records),
`loading` (models, inputs, drafters: `SweepContext`), `measure` (a cell),
`peer_hf` (the peer), `run` (`run_sweep`); and, reading records only, `markdown`,
`projection`, `plots`, `report` (`write_report`).
"""

from specdec_t5x.sweep.cells import (
  Cell,
  cell_fingerprint,
  checkpoint_identity,
  enumerate_cells,
  filter_cells,
  peer_fingerprint,
  peer_key,
)
from specdec_t5x.sweep.config import (
  SECTIONS,
  DraftSpec,
  ModelSpec,
  PeerSpec,
  SectionSpec,
  SweepConfig,
  TaskSpec,
  TimingSpec,
  config_from_dict,
  expand_path,
  load_config,
)
from specdec_t5x.sweep.loading import (
  LoadedModel,
  SweepContext,
  load_model,
  model_config,
  synthetic_inputs,
  task_inputs,
)
from specdec_t5x.sweep.measure import measure_cell, pooled_alpha, summarize_cell
from specdec_t5x.sweep.peer_hf import measure_peer
from specdec_t5x.sweep.projection import projection_markdown, scoring_curve, tpu_projection
from specdec_t5x.sweep.report import best_cells, write_report
from specdec_t5x.sweep.run import RunSummary, run_sweep
from specdec_t5x.sweep.store import (
  CellStore,
  PlanItem,
  best_gamma,
  confirm_cells,
  current_confirm_records,
  current_peer_records,
  current_records,
  plan,
)

__all__ = [
    'SECTIONS', 'Cell', 'CellStore', 'DraftSpec', 'LoadedModel', 'ModelSpec', 'PeerSpec',
    'PlanItem', 'RunSummary', 'SectionSpec', 'SweepConfig', 'SweepContext', 'TaskSpec',
    'TimingSpec', 'best_cells', 'best_gamma', 'cell_fingerprint', 'checkpoint_identity',
    'config_from_dict', 'confirm_cells', 'current_confirm_records', 'current_peer_records',
    'current_records', 'enumerate_cells',
    'expand_path', 'filter_cells', 'load_config', 'load_model', 'measure_cell', 'measure_peer',
    'model_config', 'peer_fingerprint', 'peer_key', 'plan', 'pooled_alpha',
    'projection_markdown', 'run_sweep', 'scoring_curve',
    'summarize_cell', 'synthetic_inputs', 'task_inputs', 'tpu_projection', 'write_report',
]
