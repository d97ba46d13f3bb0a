"""fedssl: federated self-supervised, multi-task learning on Flower, Lightning and lightly."""

import os as _os

# PyTorch's CPU allocator backs tensors of >= 2 MB with transparent huge pages when this is set
# (it is read once, before torch's first allocation, so it only takes effect when fedssl is
# imported before torch: the launch scripts and benchmarks do). On machines whose THP mode is
# `madvise` (the default of many distributions) it cuts the page-fault cost of every freshly
# allocated weight tensor by 3-4x; merges of large models then run near memory bandwidth
# (docs/results/aggregation.md). Set THP_MEM_ALLOC_ENABLE=0 to keep torch's default.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
