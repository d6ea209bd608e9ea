#!/usr/bin/env bash
# The hot chain on isolated cores, in one command: `bench/bare_metal.sh [SECONDS]`.
#
# Runs `python run.py bench pipeline` with the dedicated layout, every hot stage busy-spinning
# on a core of its own (the venue, the three strategies, the risk gate, the order router), the
# journal parked (blocking idle) and the controller on a housekeeping core. Prints the same
# table as every other `bench pipeline` run (tick-to-trade and per-hop p50/p99/p99.9, records
# lost, CPU per process), plus the core layout it used.
#
# Cores: the kernel's isolated set (/sys/devices/system/cpu/isolated: boot with
# isolcpus=... nohz_full=... rcu_nocbs=..., see deploy/BARE_METAL.md) when it has at least 6
# cores, else the highest-numbered 6 cores (then the figures include the scheduler's noise).
# Needs 8 cores or more. HFTFARM_PYTHON overrides the interpreter (default .venv/bin/python).
# Nothing here was measured on the development machine (2 vCPUs): run it on your own box.
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_WINDOW="${1:-20}"
PY="${HFTFARM_PYTHON:-.venv/bin/python}"
NCPU="$(nproc --all)"
if [ "$NCPU" -lt 8 ]; then
    echo "bare_metal.sh: this machine has $NCPU CPUs; the isolated-core layout needs 8 or more" \
         "(6 busy-spinning stages + housekeeping). On a small box use the default config's" \
         "composite layout: python run.py bench pipeline --layout composite" >&2
    exit 2
fi

CFG="$(mktemp /tmp/hftfarm-bare-metal.XXXXXX.toml)"
trap 'rm -f "$CFG"' EXIT
"$PY" - "$CFG" <<'EOF'
import os
import re
import sys
from pathlib import Path


def cpu_list(text):
    out = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


try:
    isolated = cpu_list(Path("/sys/devices/system/cpu/isolated").read_text())
except OSError:
    isolated = []
allowed = sorted(os.sched_getaffinity(0))
hot = [c for c in isolated if c in allowed] if len(isolated) >= 6 else allowed[-6:]
hot = hot[:6]
house = [c for c in allowed if c not in hot][0]
names = ["venue", "strategy mm_btc", "strategy pairs_btc_eth", "strategy arb_btc",
         "risk_gate", "order_router"]
layout = dict(zip(names, hot))
print("core layout: " + ", ".join(f"{n} -> CPU {c}" for n, c in layout.items())
      + f"; journal and controller -> CPU {house}"
      + (" (isolated cores)" if len(isolated) >= 6 else " (NOT isolated: no isolcpus set)"),
      file=sys.stderr)

text = Path("config.toml").read_text().split("\n[[composites]]")[0]
text = re.sub(r"(?m)^layout = .*\n", "", text)
text = re.sub(r"(?m)^(venue|risk_gate|order_router|journal) = \{.*\}\n", "", text)
stages = (f'layout = "dedicated"\n'
          f'venue = {{ cpu = {layout["venue"]}, idle = "busy-spin" }}\n'
          f'risk_gate = {{ cpu = {layout["risk_gate"]}, idle = "busy-spin" }}\n'
          f'order_router = {{ cpu = {layout["order_router"]}, idle = "busy-spin" }}\n'
          f'journal = {{ cpu = {house}, idle = "blocking" }}\n')
text = text.replace("[stages]\n", "[stages]\n" + stages, 1)
for s in ("mm_btc", "pairs_btc_eth", "arb_btc"):
    text = text.replace(f'name = "{s}"\n',
                        f'name = "{s}"\ncpu = {layout["strategy " + s]}\nidle = "busy-spin"\n', 1)
Path(sys.argv[1]).write_text(text)
EOF

"$PY" run.py check-config --config "$CFG" >/dev/null
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  ($(nproc --all) CPUs, $(uname -r))"
# the controller and this script stay on the housekeeping core: the hot cores only spin
HOUSE="$("$PY" -c "import re,sys; t=open('$CFG').read(); print(re.search(r'journal = \{ cpu = (\d+)', t).group(1))")"
exec taskset -c "$HOUSE" "$PY" run.py bench pipeline --config "$CFG" --layout dedicated \
    --seconds "$SECONDS_WINDOW"
