"""THE metric list (names, headers, directions) without torch, so that readers of result folders
(`bench status`, results.cell) answer in about a second instead of importing torch (4 s).

rsbench.evaluation.metrics (which needs torch for the rank counting) re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    """One reported metric. The table below is THE metric list: every other list (metrics.json keys,
    leaderboard and paper-table columns, tested metrics, selection directions, headers) derives from it."""

    name: str  # key in metrics.json and column name
    header: str  # column header in the Markdown leaderboard
    higher_is_better: bool
    in_table: bool  # a column of the paper tables and a metric of the significance tests
    recall_k: int | None = None  # R@K of direction `query`

    @property
    def query(self) -> str | None:
        """'i2t' or 't2i' for a metric of one retrieval direction, None for mR."""
        head = self.name.split("_")[0]
        return head if head in ("i2t", "t2i") else None


def _recall(query: str, k: int) -> MetricSpec:
    return MetricSpec(f"{query}_r{k}", f"{query.upper()} R@{k}", True, True, k)


def _rank(query: str, stat: str, header: str) -> MetricSpec:
    return MetricSpec(f"{query}_{stat}", f"{query.upper()} {header}", False, False)


# in metrics.json order; mR is the mean of the six recalls
METRICS: tuple[MetricSpec, ...] = (
    *(_recall(q, k) for q in ("i2t", "t2i") for k in (1, 5, 10)),
    MetricSpec("mR", "mR", True, True),
    *(_rank(q, stat, header) for q in ("i2t", "t2i") for stat, header in (("medr", "MedR"), ("meanr", "MeanR"))),
)
SUMMARY_METRIC = "mR"  # the leaderboard's sort key and first column

METRIC_KEYS: tuple[str, ...] = tuple(s.name for s in METRICS)
RECALL_KS: tuple[int, ...] = tuple(sorted({s.recall_k for s in METRICS if s.recall_k is not None}))
METRIC_HEADERS: dict[str, str] = {s.name: s.header for s in METRICS}
# paper-table column order (mR last, as papers print it)
TABLE_METRICS: tuple[str, ...] = tuple(s.name for s in METRICS if s.in_table)
# summary metric first: leaderboard columns, and the metrics the significance tests report
LEADERBOARD_METRICS: tuple[str, ...] = (SUMMARY_METRIC, *(k for k in METRIC_KEYS if k != SUMMARY_METRIC))
TESTED_METRICS: tuple[str, ...] = (SUMMARY_METRIC, *(k for k in TABLE_METRICS if k != SUMMARY_METRIC))

# +1: higher is better (recalls, mR); -1: lower is better (median / mean rank). Checkpoint selection
# on a validation metric (train.select_metric) compares sign * value.
METRIC_DIRECTION: dict[str, int] = {s.name: 1 if s.higher_is_better else -1 for s in METRICS}


def metric_sign(name: str) -> int:
    """+1 if a larger value of the metric is better, -1 if a smaller one is (ranks)."""
    return METRIC_DIRECTION[name]
