#!/usr/bin/env bash
# The main job, end to end, on a fresh machine: install, build the data, train (or reuse) the
# model family, evaluate it, and write results/. Every step is cached, so running it again
# only redoes what is missing.
#
#   scripts/reproduce.sh [--family default|miniature] [--translations-dir DIR]
#
# Steps:
#   1. venv     .venv in the repo (python3 -m venv), `pip install -c constraints.txt -e .[all]`
#               (skipped when setup.py and constraints.txt are unchanged since the last install);
#   2. data     scripts/build_data.py: Debian's DDTP Translation-en/-de lists -> TFDS + vocabulary
#               in $SPECDEC_CACHE_DIR (default ~/.cache/specdec_t5x). Fetching the lists uses apt
#               and needs root; without root, pass --translations-dir with fetched lists;
#   3. train    scripts/train_family.py --family F (89 min on 2 idle cores of an AMD EPYC (Zen 5)
#               for `default`, 2026-12-08; about 140 on the Intel Xeon host (configs/family_notes.md):
#               the target, three drafts, the target's greedy outputs for 800 training batches and
#               its hidden states, and the three drafts distilled towards the target on them;
#               a couple of minutes
#               for `miniature`; resumable, cached); for `default` then
#               scripts/compare_distillation.py twice (results/distill_compare_{large,small}.*,
#               about 8 min: which loss, and which data, the distilled drafts use);
#   4. evaluate scripts/evaluate_family.py --family F -> results/models.md, results/models.json
#               (results/models.miniature.* for the miniature family);
#   5. cheap    drafts without a draft model: unigram/bigram counts (scripts/build_ngram_drafters.py)
#               and PaSS look-ahead embeddings for the target (scripts/train_pass.py), then their
#               alpha and speed (scripts/measure_cheap_drafts.py -> results/cheap_drafts.md;
#               default family only);
#   6. sweep    scripts/sweep.py --config configs/sweep_F.json -> results/table2.md, ... (below);
#   7. bench    default family only: scripts/bench_scoring_cost.py (results/scoring_cost.*),
#               scripts/bench_loop_overhead.py --rounds 5 (results/loop_overhead.*) and
#               scripts/bench_paper_scale.py (results/paper_scale.*, projection_tpu.md; T5 1.1
#               small/base/large shapes, about 25 min), random weights; then the baselines against T5X's own decoding, which need t5x
#               (README "Installing t5x"): $T5X_VENV/bin/python scripts/bench_baselines.py --family
#               (results/baselines.*), run here when $T5X_VENV (default /tmp/t5x-venv) imports t5x.
set -euo pipefail

usage() {
  sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'
}

family=default
translations_dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --family) family="${2:?--family needs a value (default or miniature)}"; shift 2 ;;
    --family=*) family="${1#*=}"; shift ;;
    --translations-dir) translations_dir="${2:?--translations-dir needs a directory}"; shift 2 ;;
    --translations-dir=*) translations_dir="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$family" in
  default|miniature) ;;
  *) echo "error: --family must be 'default' or 'miniature', got '$family'" >&2; exit 2 ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export JAX_PLATFORMS=cpu
python="$repo/.venv/bin/python"
started=$SECONDS

echo "== [1/7] environment: $repo/.venv"
if [[ ! -x "$python" ]]; then
  python3 -m venv .venv
fi
stamp=.venv/.specdec_install_stamp
wanted="$(cat setup.py constraints.txt | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
  "$python" -m pip install --upgrade pip
  "$python" -m pip install -c constraints.txt -e '.[all]'
  echo "$wanted" > "$stamp"
else
  echo "   installed already (setup.py and constraints.txt unchanged)"
fi

echo "== [2/7] data: scripts/build_data.py"
data_args=()
if [[ -n "$translations_dir" ]]; then
  data_args+=(--translations-dir "$translations_dir")
fi
if ! "$python" scripts/build_data.py "${data_args[@]}"; then
  if [[ -z "$translations_dir" && "$(id -u)" != 0 ]]; then
    cat >&2 <<'EOF'
error: building the data failed. Fetching Debian's Translation-en/-de lists runs
  apt-get -o Acquire::Languages="en,de" update
which needs root. Either rerun this script as root (e.g. with sudo), or fetch the lists
yourself (as root, elsewhere: the files /var/lib/apt/lists/*_i18n_Translation-{en,de}*) and run
  scripts/reproduce.sh --translations-dir DIR
with DIR holding those files.
EOF
  else
    echo "error: scripts/build_data.py failed (see above)" >&2
  fi
  exit 1
fi

echo "== [3/7] train: scripts/train_family.py --family $family"
"$python" scripts/train_family.py --family "$family"
if [[ "$family" == default ]]; then
  "$python" scripts/compare_distillation.py --draft large --steps 100 --arms ce,fkl,tvd,argmax
  "$python" scripts/compare_distillation.py --draft small --steps 150 --arms fkl,fkl@target_greedy \
    --validation-examples 128
fi

echo "== [4/7] evaluate: scripts/evaluate_family.py --family $family"
"$python" scripts/evaluate_family.py --family "$family"

if [[ "$family" == default ]]; then
  echo "== [5/7] cheap drafts: n-gram counts, PaSS look-ahead embeddings, their alpha and speed"
  "$python" scripts/build_ngram_drafters.py
  "$python" scripts/train_pass.py --family "$family" --num-lookahead 6
  "$python" scripts/measure_cheap_drafts.py --family "$family"
else
  echo "== [5/7] cheap drafts: skipped (the miniature sweep uses model drafts only)"
fi

# ---- sweep (issue 8): speculative vs autoregressive, alpha / gamma / speed with theory ----------
# scripts/sweep.py runs configs/sweep_<family>.json: per (task, draft, temperature, gamma) cell the
# jitted speculative and autoregressive decoders on the same inputs, alpha, c, the scoring cost and
# the theory's prediction; then tokens/s over batch sizes and the Hugging Face peer. Finished cells
# are kept in $SPECDEC_CACHE_DIR/sweeps/<family>.jsonl, so a rerun (or a run after a kill) only
# measures what is missing. Unigram/bigram counts and PaSS embeddings are used when built (their
# cells are skipped, and listed as such, otherwise). Writes results/table2.md, table3.md,
# peer_hf.md, projection_tpu.md, sweep.json and *.png (results/miniature/ for the miniature
# family). About 40 min to 1 h for the default family on 2 idle cores, a few minutes for the miniature one.
echo "== [6/7] sweep: scripts/sweep.py --config configs/sweep_$family.json"
"$python" scripts/sweep.py --config "configs/sweep_$family.json"
# ---- end of the sweep step ----------------------------------------------------------------------

if [[ "$family" == default ]]; then
  echo "== [7/7] benchmarks: scoring cost, loop overhead, baselines (results/*.md)"
  "$python" scripts/bench_scoring_cost.py
  "$python" scripts/bench_loop_overhead.py --rounds 5
  "$python" scripts/bench_paper_scale.py
  # projection_tpu.md takes the largest paper-scale shape's scoring curve: re-render the sweep's report.
  "$python" scripts/sweep.py --config "configs/sweep_$family.json" --report-only
  t5x_python="${T5X_VENV:-/tmp/t5x-venv}/bin/python"
  if [[ -x "$t5x_python" ]] && "$t5x_python" -c 'import t5x.models, specdec_t5x' 2>/dev/null; then
    "$t5x_python" scripts/bench_baselines.py --family
  else
    echo "   baselines skipped: no t5x venv at ${T5X_VENV:-/tmp/t5x-venv} (README: Installing t5x);"
    echo "   then run: JAX_PLATFORMS=cpu \$T5X_VENV/bin/python scripts/bench_baselines.py --family"
  fi
else
  echo "== [7/7] benchmarks: skipped (default family only)"
fi

if [[ "$family" == default ]]; then
  results="$repo/results/models.md"
else
  results="$repo/results/models.$family.md"
fi
echo "== done in $(( (SECONDS - started) / 60 )) min. Results: $results (and .json);"
echo "   checkpoints: ${SPECDEC_CACHE_DIR:-$HOME/.cache/specdec_t5x}/models/$family/"
