"""Print the simulated calibration of the findings' verdict rule: coverage of its 95 % intervals and
its false-"holds" rate, per scenario (seed spread or query noise dominant, 3 and 10 seeds, proportions
at 0 and 1, tasks pooled as a random effect, a Holm family, an equivalence claim at its margin), beside
the previous rule (a two-level percentile bootstrap). Numpy and scipy only; a few seconds.

    python experiments/verdict_calibration.py [--replicates 4000] [--seed 0]

The same table: ``icl-lens findings --calibration``; docs/verdicts.md quotes it.
"""

from __future__ import annotations

import argparse
import sys

from icl_lens.reporting.calibration import DEFAULT_REPLICATES, calibration_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES, help="replicates per scenario")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    args = parser.parse_args(argv)
    sys.stdout.write(calibration_markdown(args.replicates, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
