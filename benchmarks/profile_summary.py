"""Summarise a py-spy raw (collapsed-stack) profile: the functions with the most samples, self and inclusive.

    python -m benchmarks.profile_summary benchmarks/out/profile_plain_c64.txt [--top 40] [--grep server/]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_LINE = re.compile(r"\s*\(([^)]*?):\d+\)$")


def _func(frame: str) -> str:
    # "name (path/to/file.py:123)" -> "name (file.py)" : lines merged, so a function is one row
    m = _LINE.search(frame)
    if not m:
        return frame.strip()
    path = m.group(1)
    short = "/".join(path.split("/")[-2:])
    return f"{frame[:m.start()].strip()} ({short})"


def summarize(path: str) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            try:
                count = int(n)
            except ValueError:
                continue
            frames = [_func(x) for x in stack.split(";") if x]
            if not frames:
                continue
            total += count
            own[frames[-1]] += count
            for fr in set(frames):
                incl[fr] += count
    return total, own, incl


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--grep", default=None, help="only functions whose row contains this text")
    a = p.parse_args()
    total, own, incl = summarize(a.profile)
    print(f"{total} samples")
    for title, c in (("self", own), ("inclusive", incl)):
        print(f"\n-- {title} --")
        shown = 0
        for fn, n in c.most_common():
            if a.grep and a.grep not in fn:
                continue
            print(f"{100.0 * n / total:6.1f}%  {n:6d}  {fn}")
            shown += 1
            if shown >= a.top:
                break


if __name__ == "__main__":
    main()
