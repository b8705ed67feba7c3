"""`tunesmith smith`: Leslie Smith's procedure as one command, with its reasoning written down.

1. LR range test -> the LR band [max/10, max]. It runs in the driver while Ray starts (on a
   cluster, as a task where trials run), sized to the data, and checks its own curve: an
   uninformative one gives no band, and stage 2 then searches a wide LR range instead of
   reading a band from noise.
2. An ASHA sweep with 1cycle: the LR log-uniform from half a decade below the band's max to a
   decade and a half above it (the rule is conservative, the test can misread by a decade, and
   short runs favour LRs that are too small), jointly with the cyclical momentum's upper bound
   {0.99, 0.97, 0.95, 0.9} and Smith's weight decays, drawn quasi-randomly (a scrambled Halton
   sequence) so that the few trials a budget allows cover the range evenly. --coupling effective
   couples the two (lr/(1-m) is the effective step, and the range test measured it at
   trainer.momentum, so each trial's LR is the drawn one scaled by (1-m)/(1-trainer.momentum));
   on the quality benchmark that did no better, so the default draws them apart. ASHA's first
   rung comes a third of the way into each schedule.
3. Optionally (--final), the best configuration trained for the spec's full length.

``time_budget_s`` covers all the stages. smith checks its own answer: a best no better than
chance is never reported without a warning; it widens the LR range and spends the rest of the
budget. The report (smith_report.md, smith.json) lists each stage's decision and why.

The package: ``policy`` (pure: what each stage runs), ``startup`` (the range test, the pilot and
Ray's start, overlapped), ``report`` (the Markdown and JSON), ``run`` (the stages in order).
"""
from tunesmith.orchestrator.smith.policy import (ABOVE, BELOW, MOMENTA, STAGE3_MARGIN, STAGE3_WIND_DOWN_S, WIDE,
                                                 NoResult, Options, check, final_spec, search_range,
                                                 stage1_options, stage2_spec, stage3_hold_back)
from tunesmith.orchestrator.smith.report import render
from tunesmith.orchestrator.smith.run import run

__all__ = ["ABOVE", "BELOW", "MOMENTA", "STAGE3_MARGIN", "STAGE3_WIND_DOWN_S", "WIDE", "NoResult", "Options",
           "check", "final_spec", "render", "run", "search_range", "stage1_options", "stage2_spec",
           "stage3_hold_back"]
