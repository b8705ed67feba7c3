"""bench/quality.py's judgement by the test split (#28): smith against each contender, paired
seed by seed over the seeds both read a test figure for."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quality():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import quality
    finally:
        sys.path.pop(0)
    return quality


def _row(contender, tests):
    # (dataset, budget, repeats, contender, best, first, reached, behind, each val, each test)
    return ("shapes", 90, len(tests), contender, 0.0, None, 0, 0.0, [0.5] * len(tests), tests)


def test_the_test_split_pairs_only_the_seeds_both_read():
    quality = _quality()
    rows = [_row("smith", [0.60, None, 0.56, 0.58]), _row("random", [0.61, 0.50, None, 0.55]),
            _row("tpe", [None, 0.52, 0.50, None]), _row("smith-scratch", [0.10, 0.10, 0.10, 0.10])]
    lines = quality._paired_tests(rows, "shapes")
    # random shares seeds 0 and 3 with smith: -1 and +3 points, so +1.0 on average over 2 seeds;
    # tpe shares one seed (no interval) and smith from scratch is no contender
    assert len(lines) == 1
    assert "smith - random" in lines[0] and "+1.0 pp" in lines[0] and "over 2 seeds" in lines[0]
    assert "cannot tell" in lines[0]


def test_the_tests_line_prints_the_pairs_beside_the_medians(capsys):
    quality = _quality()
    rows = [_row("smith", [0.6078, 0.5056, 0.5533]), _row("random", [0.6044, 0.5100, 0.5600])]
    quality._print_tests(rows, ["shapes"], True)
    out = capsys.readouterr().out
    assert "shapes   smith - random           -0.3 pp" in out
    assert "worst gap 0.7 pp: NOT met" in out
