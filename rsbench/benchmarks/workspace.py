"""The problem sizes of a perf run (full or --quick) and the workspace every item gets: the sizes, a
temporary folder, the report's notes and extra sections, and the synthetic data set of items 4 and 5."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run (full or --quick)."""

    metrics: tuple[int, int] = (1093, 5465)
    amfmn: tuple[int, int, int] = (1093, 5465, 512)
    amfmn_subset: int = 64  # images encoded by ours in item 2 (and the same fraction of captions), scaled up
    amfmn_shard: int = 128  # the authors' shard_dis shard size (item 2)
    amfmn_step: tuple[int, int] = (100, 256)  # batch, pixels: the authors' RSICD config (item 8)
    amfmn_step_repeats: int = 1
    slow_budget_s: float = 600.0  # items 2 and 8: calls of 5-30 s still get a separate warm-up call
    amfmn_text: tuple[int, int] = (620, 2400)  # skip-thought word and GRU sizes (items 2 and 8)
    mscmat_batches: tuple[int, ...] = (32, 100)
    loading_images: int = 300
    loading_formats: tuple[str, ...] = ("png", "jpeg", "tiff")
    train_batch: int = 0  # 0: the preset's batch size
    scale: tuple[int, int, int] = (50_000, 250_000, 256)
    scan: tuple[int, int, int, int, int] = (452, 2260, 49, 20, 256)  # images, captions, regions, words, D
    repeats: int = 5
    budget_s: float = 20.0  # time one side may spend in timed repeats
    grid: tuple[str, ...] = ()  # item 11's `bench run` grid (empty: the README's full comparison)


FULL = Sizes()
QUICK = Sizes(metrics=(200, 1000), amfmn=(100, 500, 64), amfmn_subset=4, amfmn_shard=8, amfmn_step=(4, 256),
              amfmn_text=(32, 64), slow_budget_s=0.5,
              mscmat_batches=(4, 8), loading_images=12, train_batch=4, scale=(2_000, 10_000, 256), scan=(40, 200, 16, 12, 32),
              repeats=3, budget_s=0.5,
              grid=("--methods", "vsepp,clip", "--dataset", "synthetic", "--seeds", "0,1", "--epochs", "1"))


# ---- workspace: temp folder and the synthetic data set shared by items 4 and 5 ---------------------


@dataclass
class Workspace:
    sizes: Sizes
    root: Path
    notes: list[str] = field(default_factory=list)
    extra_sections: list[str] = field(default_factory=list)
    _data: Any = None

    def synthetic(self) -> Any:
        """A synthetic data set at 256 px (generated once per run)."""
        if self._data is None:
            from ..datasets import load_dataset
            from ..datasets.synthetic import generate_synthetic

            folder = self.root / "synthetic"
            generate_synthetic(folder, n_images=self.sizes.loading_images, image_size=256)
            self._data = load_dataset("synthetic", data_root=folder)
        return self._data
