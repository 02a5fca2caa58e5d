#!/usr/bin/env python3
"""Tabulates the CHAOS lines of a test log (read on stdin) as CHAOS.md's scenario table:
one row per scenario with its runs, passes, bytes lost, median bytes re-sent and median time
to recover. Used by scripts/chaos.sh and scripts/chaos-rows.sh."""
import re
import statistics
import sys

LINE = re.compile(
    r"CHAOS(_RESENT)? ([a-z0-9_]+) (ok=(true|false) recover_ms=([0-9]+) bytes_lost=([0-9]+)|bytes=([0-9]+))"
)
rows, resent = {}, {}
for text in sys.stdin:
    for m in LINE.finditer(text):
        name = m.group(2)
        if m.group(1):
            resent.setdefault(name, []).append(int(m.group(7)))
            continue
        r = rows.setdefault(name, [0, 0, 0, []])
        r[0] += 1
        r[1] += m.group(4) == "true"
        r[2] += int(m.group(6))
        r[3].append(int(m.group(5)))
print("| scenario | runs | passed | bytes lost | bytes re-sent (median) | time to recover (median) |")
print("|---|---|---|---|---|---|")
for name in sorted(rows):
    n, passed, lost, ms = rows[name]
    re_ = resent.get(name)
    re_ = f"{statistics.median_low(re_) / 1e6:.1f} MB" if re_ else "–"
    print(f"| {name} | {n} | {passed} | {lost} | {re_} | {statistics.median_low(ms) / 1000:.1f} s |")
