"""The stage status block's layout: word offsets (``W_*``), stage states (``ST_*``) and their
names. Pure constants, no shared memory: the stage runner and the stages fill the words, the
controller and the CLI read them (shm/status.py holds the segment and the atomic stores).

One block is 128 bytes (16 int64 words) per stage slot: two cache lines, so the adjacent-line
prefetcher never couples two processes' counters either. Every word has exactly one writer at a
time: the stage owns all words except ``restarts``, which the controller writes only while that
stage's process is dead or not yet started.
"""
from __future__ import annotations

BLOCK_BYTES = 128
BLOCK_WORDS = BLOCK_BYTES // 8

# word indices inside one block
W_STATE = 0
W_PID = 1
W_CPU = 2
W_HEARTBEAT_NS = 3     # CLOCK_MONOTONIC ns of the last heartbeat (written last)
W_RECORDS_IN = 4
W_RECORDS_OUT = 5
W_RING_LAG = 6         # records visible to the stage but not yet read, summed over its inputs
W_RECORDS_LOST = 7     # market records lost to lapping (broadcast readers)
W_ERRORS = 8
W_RESTARTS = 9         # written by the controller while the stage is down
W_STARTED_NS = 10
W_X0 = 11              # stage specific (risk gate: risk state; router: open orders ...)
W_X1 = 12
W_X2 = 13
W_X3 = 14
W_CTRL_ACK = 15        # sequence number of the last control command the stage handled;
                       # negated when the stage's on_control raised (answered, not done)

FIELD_NAMES = ("state", "pid", "cpu", "heartbeat_ns", "records_in", "records_out", "ring_lag",
               "records_lost", "errors", "restarts", "started_ns", "x0", "x1", "x2", "x3",
               "ctrl_ack")

ST_EMPTY = 0
ST_STARTING = 1
ST_RUNNING = 2
ST_STOPPING = 3
ST_STOPPED = 4
ST_FAILED = 5
ST_RESTARTING = 6
ST_DEAD = 7
ST_COMPILING = 8       # starting, and numba is compiling (not loading from its cache)
STATE_NAMES = {ST_EMPTY: "EMPTY", ST_STARTING: "STARTING", ST_RUNNING: "RUNNING",
               ST_STOPPING: "STOPPING", ST_STOPPED: "STOPPED", ST_FAILED: "FAILED",
               ST_RESTARTING: "RESTARTING", ST_DEAD: "DEAD", ST_COMPILING: "COMPILING"}

# a live feed stage's connection state (its status word x0; stages/feed_live.py)
FEED_CONNECTING = 1    # no connection yet (first try, or waiting out a backoff after a failure)
FEED_CONNECTED = 2     # connected and subscribed
FEED_DISCONNECTED = 3  # was connected, lost it; reconnecting with backoff
FEED_REFUSED = 4       # will not connect (no allow_live for a non-loopback endpoint)
FEED_STATE_NAMES = {0: "starting", FEED_CONNECTING: "connecting", FEED_CONNECTED: "connected",
                    FEED_DISCONNECTED: "disconnected", FEED_REFUSED: "refused"}
