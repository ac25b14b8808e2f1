"""Start-up time of a command that loads no model: `manage.py kb_list`, measured with
`python -X importtime` in fresh interpreters, and whether the model stack (torch,
sentence-transformers, transformers, peft) was imported at all.

    python bench/startup.py                     # this checkout, 5 runs
    python bench/startup.py --repo /tmp/before  # another checkout (e.g. `git worktree add /tmp/before <commit>`)

Prints, per run, the wall time of the whole command, the cumulative import time Python
reports for everything it imported, and the model-stack modules among them; then the median.
The command needs the embedded services running (`manage.py devservices start`) and a
migrated database, like any command.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODEL_STACK = ("torch", "sentence_transformers", "transformers", "peft")
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|(\s+)(\S+)$")


def one_run(repo: Path, python: str) -> tuple[float, float, list[str]]:
    started = time.perf_counter()
    result = subprocess.run(
        [python, "-X", "importtime", "manage.py", "kb_list"], cwd=repo, capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - started
    total_us = 0
    imported = set()
    for line in result.stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if not match:
            continue
        name = match.group(4)
        if len(match.group(3)) == 1:  # a top-level import: its cumulative time counts once
            total_us += int(match.group(2))
        if name in MODEL_STACK:
            imported.add(name)
    return wall, total_us / 1e6, sorted(imported)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    walls, imports = [], []
    for number in range(1, args.runs + 1):
        wall, import_s, stack = one_run(args.repo, args.python)
        walls.append(wall)
        imports.append(import_s)
        print(f"run {number}: wall {wall:.2f} s, imports {import_s:.2f} s, model stack imported: {', '.join(stack) or 'none'}")
    print(f"median over {args.runs}: wall {statistics.median(walls):.2f} s, imports {statistics.median(imports):.2f} s")


if __name__ == "__main__":
    main()
