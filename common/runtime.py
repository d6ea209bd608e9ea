"""Names and defaults the strategy runtime and the control plane share (a leaf: imports nothing).

Runs wherever it is imported; no hot path. Defined once here so that the config schema
(pipeline/config.py), the runtime (strategies/host.py), the generated host steps
(stages/host_codegen.py) and the warm-spare manifests (pipeline/numba_cache.py) agree.
"""

DEFAULT_TIMER_MS = 10.0     # [[strategies]] timer_ms: on_timer period, live, replay, backtest
DEFAULT_BOOK_LEVELS = 64    # [[strategies]] book_levels: price levels per side in its books
# module-name prefix of a strategy's generated host step (stages/host_codegen.py), which lives
# outside the packages (in the numba cache directory)
GENERATED_PREFIX = "hftfarm_hostgen_"
