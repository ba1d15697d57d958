"""Pure-Python planning of TP/PP/DP/EP: specs, validation, shards, memory, traffic, search.

Nothing here imports the C++ core, the communicator or the runtime: a plan for 16 H100s is
computed on a laptop.
"""

from __future__ import annotations

from ..errors import PlanError
from .config import (
    ParallelConfig,
    check_config,
    default_layer_partition,
    feasible_configs,
    split_range,
    split_sizes,
)
from .memory import MemoryReport, kv_bytes_per_token, memory_report
from .plan import Plan, RankPlan, make_plan, weight_tensors
from .schedule import Schedule, pipeline_schedule
from .search import Candidate, SearchResult, auto_plan, evaluate
from .specs import (
    DEVICE_PRESETS,
    GB,
    GIB,
    MODEL_PRESETS,
    ClusterSpec,
    DeviceSpec,
    ModelSpec,
    dtype_bytes,
)
from .traffic import (
    TrafficPrediction,
    collective_sent,
    compare_traffic,
    merge_traffic,
    predict_traffic,
    ring_all_reduce_recv,
    ring_all_reduce_sent,
    seed_ep_bytes,
    seed_pp_bytes,
    seed_tp_bytes,
    step_collectives,
    token_traffic,
)

__all__ = [
    "DEVICE_PRESETS",
    "GB",
    "GIB",
    "MODEL_PRESETS",
    "Candidate",
    "ClusterSpec",
    "DeviceSpec",
    "MemoryReport",
    "ModelSpec",
    "ParallelConfig",
    "Plan",
    "PlanError",
    "RankPlan",
    "Schedule",
    "SearchResult",
    "TrafficPrediction",
    "auto_plan",
    "check_config",
    "collective_sent",
    "compare_traffic",
    "merge_traffic",
    "default_layer_partition",
    "dtype_bytes",
    "evaluate",
    "feasible_configs",
    "kv_bytes_per_token",
    "make_plan",
    "memory_report",
    "pipeline_schedule",
    "predict_traffic",
    "ring_all_reduce_recv",
    "ring_all_reduce_sent",
    "seed_ep_bytes",
    "seed_pp_bytes",
    "seed_tp_bytes",
    "split_range",
    "split_sizes",
    "step_collectives",
    "token_traffic",
    "weight_tensors",
]
