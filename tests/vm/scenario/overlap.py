"""Which requests overlapped warrant's restarts (argv: JOURNAL AGENT_LOG).

JOURNAL: `journalctl -o json _PID=1 UNIT=warrant.service`, systemd's own
records of the unit's jobs. A restart window runs from "Stopping" (the old
daemon is about to get SIGTERM) to the next "Started" (the new daemon sent
READY=1), told apart by their catalog MESSAGE_IDs, not their text.
AGENT_LOG: agent.py --out lines, with each request's start and end on
CLOCK_MONOTONIC (t0, t1), the clock of the journal's __MONOTONIC_TIMESTAMP.

Prints one "window" line per restart, then "overlapping N" (requests in
flight at some point of a window) and "started-inside N" (requests whose
connection was made while the old daemon stopped or the new one started).
"""

import json
import sys

UNIT_STOPPING = "de5b426a63be47a7b6ac3eaac82e2f6f"
UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"

journal, agent_log = sys.argv[1], sys.argv[2]
events = []
with open(journal) as lines:
    for line in lines:
        record = json.loads(line)
        kind = {UNIT_STOPPING: "stopping", UNIT_STARTED: "started"}.get(record.get("MESSAGE_ID"))
        if kind:
            events.append((int(record["__MONOTONIC_TIMESTAMP"]) / 1e6, kind))
events.sort()
windows = []
stopping = None
for when, kind in events:
    if kind == "stopping":
        stopping = when
    elif stopping is not None:
        windows.append((stopping, when))
        stopping = None

requests = []
with open(agent_log) as lines:
    for line in lines:
        entry = json.loads(line)
        if "t0" in entry and "t1" in entry:
            requests.append((entry["t0"], entry["t1"], entry.get("ok")))

overlapping = set()
started_inside = set()
for n, (begin, end) in enumerate(windows, 1):
    over = [i for i, (t0, t1, _) in enumerate(requests) if t0 < end and t1 > begin]
    inside = [i for i in over if begin <= requests[i][0] <= end]
    failed = [i for i in over if not requests[i][2]]
    overlapping.update(over)
    started_inside.update(inside)
    print(
        f"window {n}: {begin:.3f}-{end:.3f} ({end - begin:.2f}s): "
        f"{len(over)} requests in flight, {len(inside)} started inside, {len(failed)} failed"
    )
print(f"overlapping {len(overlapping)}")
print(f"started-inside {len(started_inside)}")
