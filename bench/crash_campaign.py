"""The crash campaign: every scenario of tests/crash.py's matrix (or a pairwise sample), each
interrupted at seeded random moments and rerun until exit 0, with the invariant checked.

    python bench/crash_campaign.py                 # the whole matrix (216 scenarios)
    python bench/crash_campaign.py --pairwise 15   # the sample CI runs
    python bench/crash_campaign.py --seed 7 --only jsonl   # replay a family

Prints one line per scenario (seed, interruptions and their moments, exit statuses) and a
summary: scenarios, interruptions, IDs checked, violations.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from crash import full_matrix, pairwise, run_scenario


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--pairwise", type=int, metavar="N", help="only N pairwise scenarios")
    parser.add_argument("--only", help="only scenarios whose description contains this text")
    args = parser.parse_args()
    scenarios = pairwise(args.seed, args.pairwise) if args.pairwise else full_matrix(args.seed)
    if args.only:
        scenarios = [s for s in scenarios if args.only in str(s)]
    started = time.monotonic()
    kills = ids = violations = 0
    for scenario in scenarios:
        with tempfile.TemporaryDirectory() as folder:
            report = run_scenario(scenario, Path(folder))
        kills += len(report.kills)
        ids += report.ids_checked
        violations += len(report.violations)
        print(report, "OK" if not report.violations else "VIOLATED", flush=True)
        for violation in report.violations:
            print("   ", violation, flush=True)
    print(
        f"scenarios {len(scenarios)}, interruptions {kills}, IDs checked {ids}, "
        f"violations {violations}, {time.monotonic() - started:.0f} s"
    )
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
