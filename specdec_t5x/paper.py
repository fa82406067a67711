"""The paper's figures: Leviathan, Kalman & Matias (ICML 2023), Tables 2 and 3 and the drafts' c.

One module, so that the sweep, the cheap-draft report, the TPU projection and the
tests all compare against the same numbers (../shared/REFERENCE.md section 1).
Task names are the paper's: 'EnDe' (WMT EnDe) and 'CNNDM' (CNN/DailyMail).
"""

from __future__ import annotations

# Table 2: T5-XXL target, batch 1, TPU-v4: (task, Mq, temperature, γ, α, speed).
PAPER_TABLE2: tuple[tuple[str, str, float, int, float, float], ...] = (
    ('EnDe', 'T5-small', 0.0, 7, 0.75, 3.4),
    ('EnDe', 'T5-base', 0.0, 7, 0.80, 2.8),
    ('EnDe', 'T5-large', 0.0, 7, 0.82, 1.7),
    ('EnDe', 'T5-small', 1.0, 7, 0.62, 2.6),
    ('EnDe', 'T5-base', 1.0, 5, 0.68, 2.4),
    ('EnDe', 'T5-large', 1.0, 3, 0.71, 1.4),
    ('CNNDM', 'T5-small', 0.0, 5, 0.65, 3.1),
    ('CNNDM', 'T5-base', 0.0, 5, 0.73, 3.0),
    ('CNNDM', 'T5-large', 0.0, 3, 0.74, 2.2),
    ('CNNDM', 'T5-small', 1.0, 5, 0.53, 2.3),
    ('CNNDM', 'T5-base', 1.0, 3, 0.55, 2.2),
    ('CNNDM', 'T5-large', 1.0, 3, 0.56, 1.7),
)
# Measured c of each draft against T5-XXL.
PAPER_C: dict[str, float] = {'T5-small': 0.02, 'T5-base': 0.04, 'T5-large': 0.11}
# Table 3: α of cheap drafts for T5-XXL, (task, draft) -> (α at T=0, α at T=1).
PAPER_TABLE3: dict[tuple[str, str], tuple[float, float]] = {
    ('EnDe', 'unigram'): (0.08, 0.07),
    ('EnDe', 'bigram'): (0.20, 0.19),
    ('CNNDM', 'unigram'): (0.13, 0.08),
    ('CNNDM', 'bigram'): (0.23, 0.16),
}


def paper_table2_row(paper_task: str | None, paper_mq: str | None,
                     temperature: float) -> dict[str, float] | None:
  """The paper's Table 2 row `{gamma, alpha, speed}` for (task, Mq, temperature), if any."""
  for task, mq, temp, gamma, alpha, speed in PAPER_TABLE2:
    if (task, mq, temp) == (paper_task, paper_mq, float(temperature)):
      return {'gamma': gamma, 'alpha': alpha, 'speed': speed}
  return None


def paper_alpha(paper_task: str | None, paper_draft: str | None,
                temperature: float) -> float | None:
  """The paper's α for a draft (Table 3 for unigram/bigram, Table 2 for T5 drafts)."""
  if (paper_task, paper_draft) in PAPER_TABLE3 and float(temperature) in (0.0, 1.0):
    return PAPER_TABLE3[(paper_task, paper_draft)][int(temperature)]
  row = paper_table2_row(paper_task, paper_draft, temperature)
  return None if row is None else row['alpha']
