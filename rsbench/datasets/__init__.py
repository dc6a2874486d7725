"""Dataset loading: Karpathy JSON and AMFMN precomp layouts, val carving, checks, torch data.

Light imports only here (numpy, PIL); torch-side helpers live in rsbench.datasets.torchdata.
"""

from ..contracts import DatasetSplits, Split
from .catalogue import DatasetInfo, display_name, get_dataset_info, list_datasets
from .check import CheckReport, check_dataset
from .images import decode_image, load_image
from .source import DataSource, load_dataset

__all__ = [
    "CheckReport",
    "DataSource",
    "DatasetInfo",
    "DatasetSplits",
    "Split",
    "check_dataset",
    "decode_image",
    "display_name",
    "get_dataset_info",
    "list_datasets",
    "load_dataset",
    "load_image",
]
