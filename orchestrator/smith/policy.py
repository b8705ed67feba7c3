"""Smith's policy, pure: what each stage runs and how the budget is shared. No Ray, no threads;
tested like the schedules (tests/test_smith_policy.py)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from tunesmith.orchestrator.confirm import held_for, rounds_of
from tunesmith.orchestrator.ledger import HOLD_MARGIN, HOLD_WIND_DOWN_S, hold_at_pace, hold_for_epochs
from tunesmith.orchestrator.spec import SweepSpec, default_grace
from tunesmith.trainables.config import ConfigError

# --- the constants, each with why -------------------------------------------------------------
MOMENTA = [0.99, 0.97, 0.95, 0.9]   # Smith's momentum tests: the 1cycle bound searched in stage 2
DEEP_MODELS = ("resnet18", "resnet34")   # these get Smith's smaller weight decays (weight_decay_deep)
WIDE = (1e-4, 1.0)            # the fallback LR range: where plain random search looks (issue #7)
BELOW, ABOVE = 0.5, 1.5       # decades of stage 2's LR range below and above the band's max (search_range)
DEFAULT_SAMPLES = 16          # stage-2 trials without a time budget
BUDGET_SAMPLES = 1000         # with one: as many as the budget allows
STAGE1_SHARE = 0.2            # at most this share of the budget for the range test
STAGE3_WIND_DOWN_S, STAGE3_MARGIN = HOLD_WIND_DOWN_S, HOLD_MARGIN
PILOT_S = 10.0                # the pilot's own deadline: about Ray's start and a Tune trial's first epoch here
CHANCE_MARGIN = 0.1           # "no better than chance": less than this share of the way from guessing to
                              # a perfect score, or within CHANCE_SE standard errors of guessing on the
                              # validation part's size. It was max(0.1, chance) above 1/C, which made
                              # every two-class model short of 100% "no better than chance"
CHANCE_SE = 2.0
FEW_TRIALS = 2 * DEFAULT_SAMPLES  # a budget affording fewer stage-2 trials than this searches the
                              # LR alone, with 1cycle's momentum and trainer.weight_decay, band or no
                              # band. Momentum's 4 bounds x 3 or 4 decays need each pair tried about
                              # twice to tell them from seed noise, and the range test's pace misjudges
                              # the count by a quarter either way (letters at 90 s: 15.5 estimated, 12
                              # started; 11.9 estimated, 13 started). At 13 trials the joint draw spent
                              # a third of them at bounds 0.97 and 0.99, where nothing trained, and read
                              # 0.7133 on letters against the LR alone's 0.7221 (3 seeds); on 64-px
                              # colour data (2 to 6 trials) it spent them where the LR alone mattered;
                              # with no band the LR's scale is unknown as well (shapes at 90 s, 18 trials:
                              # 8 of 16 pruned where nothing trained)
NO_BAND_BELOW, NO_BAND_ABOVE = 1.5, 0.5   # that LR range around trainer.lr, taken as a peak near the
                              # top of what trains: on shapes, letters and objects from random weights
                              # at 90 s, trials at 1.6x the default 0.05 learned nothing and the best
                              # lay at 0.16x to 0.7x; a decade either side spent half its trials, and
                              # the pilot at its centre, where nothing trained
RUNG_COST = 2.0               # a stage-2 trial's cost in first-rung lengths: every trial runs to
                              # ASHA's first rung, a third of them three times as far (1.7), and starts
EVAL_SHARE = 1.25             # an epoch's cost over its training steps: validation, report, checkpoint


class NoResult(RuntimeError):
    """smith ended without a model: one line for the user, exit code 1; what it wrote stays."""


@dataclass(frozen=True)
class Options:
    """smith's command-line choices, checked against the spec (``check``)."""
    wd_preset: str
    below: float
    above: float
    epochs: int          # stage 2's trial length
    coupled: bool        # --coupling effective
    search: str = "auto"  # --search: lr, joint, or auto (the LR alone where the budget affords few trials)


@dataclass(frozen=True)
class Stage2Plan:
    """Stage 2 from stage 1's decision: the LR range, why that range, the sweep's spec, and what
    it draws beside the LR (``beside``, for the stage's first line)."""
    lr_range: Tuple[float, float]
    basis: str
    spec: SweepSpec
    beside: str = ""
    held: bool = False            # momentum and weight decay held at the trainer's values


def weight_decay_preset(spec: SweepSpec, choice: str) -> str:
    """auto: Smith's smaller decays for deep networks, which every library model and every
    network fine-tuned from learnt weights is taken to be."""
    model = spec.train.model
    if choice == "auto":
        deep = model.name in DEEP_MODELS or model.library is not None or model.fine_tunes
        return "weight_decay_deep" if deep else "weight_decay_shallow"
    return f"weight_decay_{choice}"


def search_range(max_lr: float, below: float = BELOW, above: float = ABOVE):
    """Stage 2's LR range: from half a decade below the range test's max LR to a decade and a
    half above it, centred half a decade above the pick. The default rule (min10) is a tenth of
    the minimum-loss LR, a safe peak for one run; a 1cycle run tolerates more (Smith's own rule
    is the minimum), the test can misread by a decade, and short runs favour LRs that are too
    small (Wu et al., ICLR 2018). On the quality benchmark's datasets the trials that ended best
    lay at 3 to 10 times the pick, and those below a third of it never came near (bench/quality.py
    prints that evidence with every run)."""
    return max_lr / 10 ** below, max_lr * 10 ** above


def affordable_trials(curve, left: Optional[float], slots: int, epochs: int) -> Optional[float]:
    """About how many stage-2 trials the budget left affords: ``slots`` at once, each costing
    RUNG_COST first-rung lengths at the range test's pace per step. None without a budget or a
    measured pace."""
    epoch_s = epoch_seconds(curve)
    if left is None or not epoch_s:
        return None
    return max(0.0, left) * max(1, slots) / (RUNG_COST * default_grace(epochs) * epoch_s)


def confirmation_hold(spec: SweepSpec, curve, left: Optional[float], slots: int, epochs: int) -> float:
    """What stage 2's search will keep of ``left`` for its confirmation (confirm.budget_hold's
    rule), at the range test's pace: the trials it affords are drawn in the rest. Without it,
    smith counted the confirmation's share as the search's, and planned for up to 1/(1 - SHARE)
    times the trials that fit."""
    epoch_s = epoch_seconds(curve)
    if left is None or not epoch_s or spec.confirm.top <= 0:
        return 0.0
    return held_for(lambda n: hold_at_pace(n, epoch_s), epochs, rounds_of(spec, slots), left)


def epoch_seconds(curve) -> Optional[float]:
    """An epoch's cost at the range test's pace per step, or None where it has none."""
    if not curve.step_s or not curve.epoch_steps:
        return None
    return curve.step_s * curve.epoch_steps * EVAL_SHARE


def pilot_too_slow(curve) -> Optional[str]:
    """Why a pilot would train no whole epoch within PILOT_S, or None: it would only take a core
    from Ray's start and the trials' first workers (on 64-px colour photographs here, an epoch
    took 11 s, and the pilot ended with none)."""
    epoch_s = epoch_seconds(curve)
    if epoch_s and epoch_s > PILOT_S:
        return f"an epoch takes about {epoch_s:.0f}s here, longer than the pilot's {PILOT_S:g}s"
    return None


def local_slots(spec: SweepSpec, args) -> int:
    """How many stage-2 trials run at once where Ray starts on this machine: its CPUs and GPUs
    (or --num-cpus, --num-gpus) over a trial's, within search.max_concurrent."""
    from tunesmith.cluster.resources import max_concurrent
    r = spec.resources
    cpus = args.num_cpus or os.cpu_count() or 1
    gpus = args.num_gpus
    if gpus is None:
        gpus = 0
        if r.gpus:
            import torch
            gpus = torch.cuda.device_count()
    try:
        return max_concurrent(cpus, gpus, r.cpus * max(1, r.ranks), r.gpus, spec.plan.max_concurrent)
    except ConfigError:   # the sweep itself says so, in its own words
        return 1


def beside_lr(spec: SweepSpec, wd_preset: str, held: bool) -> str:
    """What stage 2 draws with the LR, or holds, in words."""
    from tunesmith.search_spaces.presets import PRESETS
    if held:
        return (f"max_momentum {PRESETS['lr_band'].settings['max_momentum']:g} and weight_decay "
                f"{spec.train.trainer.weight_decay:g} held")
    return f"jointly with max_momentum {MOMENTA} and {wd_preset}"


def stage2_spec(spec: SweepSpec, lr_range, epochs: int, wd_preset: str, samples: int,
                budget: Optional[float] = None, name: Optional[str] = None, coupled: bool = False,
                held: bool = False, floor: Optional[float] = None) -> SweepSpec:
    """The user's dataset, model, resources and trainer, with Smith's stage-2 search: LR,
    momentum bound and weight decay drawn jointly. ``coupled`` (smith --coupling effective):
    lr/(1-m) is the effective step, and the range test measured it at trainer.momentum, so each
    trial's LR is the range's LR scaled by (1-m)/(1-trainer.momentum): a 0.99 bound gets a tenth
    of a 0.9 bound's LR. ``held``: momentum and weight decay are not drawn (the lr_band preset's
    1cycle momentum from 0.95, and trainer.weight_decay as the spec has it)."""
    from tunesmith.search_spaces.presets import PRESETS
    if spec.train.trainer.optimizer not in ("sgd", "rmsprop"):
        raise ConfigError("trainer.optimizer", spec.train.trainer.optimizer,
                          "smith's stage 2 searches SGD-style momentum; use sgd or rmsprop")
    wd_values = PRESETS[wd_preset].space["weight_decay"]["grid"]
    space = {} if held else {"max_momentum": {"choice": MOMENTA}, "weight_decay": {"choice": list(wd_values)}}
    if spec.train.model.fine_tunes:   # the fine_tune preset's dimensions, or the spec's own of them
        own = {d.key: {"choice": list(d.values)} if d.values else {d.kind: [d.low, d.high]} for d in spec.plan.space}
        space.update({k: own.get(k, v) for k, v in PRESETS["fine_tune"].space.items()})
    search = {
        "algorithm": "quasi", "num_samples": samples, "max_concurrent": spec.plan.max_concurrent,
        "presets": ["lr_band"], "lr_band": [float(lr_range[0]), float(lr_range[1])],
        # under 1cycle, "max_momentum" is the upper bound of the cycle, which falls to 0.85 and back
        "space": space,
        "lr_momentum_ref": float(spec.train.trainer.momentum) if coupled else None,
    }
    asha = {"enabled": True, "max_t": epochs, "grace_period": default_grace(epochs),
            "reduction_factor": 3, "budget_aware": False, "floor": floor}
    return spec.derive(name=name or spec.name, trainer={"epochs": epochs}, search=search, asha=asha,
                       time_budget_s=budget,
                       # set by the lr_band preset
                       drop_trainer=("schedule", "cycle_momentum", "max_momentum", "min_momentum"))


def final_spec(spec: SweepSpec, best_config: Dict[str, Any], stage2: SweepSpec) -> SweepSpec:
    """The best configuration, full length, as a one-trial sweep named <name>-final."""
    sections: Dict[str, Dict[str, Any]] = {"trainer": {"epochs": spec.train.trainer.epochs}}
    for key, value in best_config.items():
        section, _, field = key.rpartition(".")
        sections.setdefault(section or "trainer", {})[field] = value
    return stage2.derive(name=f"{spec.name}-final", search={"algorithm": "random", "num_samples": 1},
                         asha={"enabled": False}, confirm={"top": 0}, **sections)


def plan_stage2(spec: SweepSpec, decision, opts: Options, samples: int, pilot: bool,
                left: Optional[float], slots: int = 1) -> Stage2Plan:
    """Stage 2 from stage 1's decision. The pilot is one of --samples; with a budget, stage 2
    draws as many as fit, and where that is fewer than FEW_TRIALS (at ``slots`` trials at once),
    the LR alone; where the range test gave no band, that LR alone is drawn around trainer.lr
    (NO_BAND_BELOW, NO_BAND_ABOVE)."""
    budgeted = spec.time_budget_s is not None
    # the trials are drawn in the search's share: its confirmation keeps the rest
    kept = search_s = afford = None
    if budgeted:
        kept = confirmation_hold(spec, decision.curve, left, slots, opts.epochs)
        search_s = None if left is None else left - kept
        afford = affordable_trials(decision.curve, search_s, slots, opts.epochs)
    few = afford is not None and afford < FEW_TRIALS
    held = opts.search == "lr" or (opts.search == "auto" and few)
    if decision.informative:
        lr_range = search_range(decision.max_lr, opts.below, opts.above)
        basis = (f"from {opts.below:g} decades below the range test's max LR {decision.max_lr:.3g} to "
                 f"{opts.above:g} above it")
    elif held:   # a few trials spread over four decades land mostly where nothing trains
        lr = spec.train.trainer.lr
        lr_range = (lr / 10 ** NO_BAND_BELOW, lr * 10 ** NO_BAND_ABOVE)
        basis = (f"from {NO_BAND_BELOW:g} decades below trainer.lr {lr:g} to {NO_BAND_ABOVE:g} above it, since the "
                 f"range test gave no band ({decision.curve.problem}) and "
                 + ("the budget affords few trials" if few else "stage 2 draws the LR alone"))
    else:
        lr_range = WIDE
        basis = f"the wide range, since the range test gave no band ({decision.curve.problem})"
    if spec.train.model.fine_tunes:
        basis += f"; {fine_tuning_text(spec)}"
    if held and opts.search == "lr":
        basis += "; --search lr"
    elif held:
        basis += (f"; the budget left affords about {afford:.0f} trials of {default_grace(opts.epochs)} epochs "
                  f"({slots} at once)" + (f" in the {search_s:.0f}s its confirmation leaves" if kept else "")
                  + ", too few to draw momentum and weight decay as well"
                  + ("" if decision.informative else " while the LR's placement is unknown"))
    s2 = stage2_spec(spec, lr_range, opts.epochs, opts.wd_preset, samples - pilot if not budgeted else samples,
                     None if left is None else max(1.0, left), coupled=opts.coupled, held=held,
                     floor=chance_floor(spec.metric, decision.curve))
    return Stage2Plan(lr_range, basis, s2, beside_lr(spec, opts.wd_preset, held), held)


def fine_tuning_text(spec: SweepSpec) -> str:
    """What smith does differently when the model starts from learnt weights, and why."""
    m = spec.train.model
    source = f"{m.name}'s published weights" if m.pretrained else f"the weights in {m.weights}"
    return (f"fine-tuning {source}: the range test ran on the loaded network (its curve, not a "
            "from-scratch rule, places the band), stage 2 also draws model.backbone_lr in {1, 0.3, 0.1} "
            "and model.freeze_epochs in {0, 1} (preset fine_tune: on the transfer task a tenth of the "
            "head's LR for the backbone and a frozen start did best at high LRs), Smith's smaller weight "
            "decays, and BatchNorm trains (model.freeze_bn cost 8 to 12 points there)")


def widened(lr_range) -> Tuple[float, float]:
    """The LR range a chance-level stage 2 retries with: a decade below, three times above."""
    return min(WIDE[0], lr_range[0]) / 10, max(WIDE[1], lr_range[1]) * 3


def stage3_hold_back(epochs: int) -> Callable[[Any], float]:
    """With --final and a time budget, stage 2 stops early enough for stage 3's ``epochs``
    (ledger.hold_for_epochs)."""
    return lambda ledger: hold_for_epochs(ledger, epochs)


def value_ranking(records, key: str, mode: str, at: int) -> List[Dict[str, Any]]:
    """Each value of ``key`` by the metric at epoch ``at``, ASHA's first rung: every trial that
    reached it counts, pruned ones too, and under budget-aware schedules each was read there
    with its schedule annealed."""
    groups: Dict[Any, List[float]] = {}
    for rec in records:
        value = rec.curve.get(at)
        if key in rec.hparams and value is not None and value == value:
            groups.setdefault(rec.hparams.get(key), []).append(value)
    rows = [{"value": v, "trials": len(xs), "epoch": at, "mean": sum(xs) / len(xs),
             "best": max(xs) if mode == "max" else min(xs)} for v, xs in groups.items()]
    rows.sort(key=lambda r: -r["mean"] if mode == "max" else r["mean"])
    return rows


@dataclass(frozen=True)
class Chance:
    """What guessing scores on the validation part (always its largest class: 1/C where the
    classes are balanced, more where they are not) and the least a model must reach to count as
    better than that."""
    level: float
    bar: float

    def above(self, best: Optional[float]) -> bool:
        return best is not None and best >= self.bar

    def text(self) -> str:
        return f"{self.level:.3g}, always guessing the largest class; a model needs {self.bar:.3g}"


def chance(metric: str, curve) -> Optional[Chance]:
    """From the range test's curve (its data's classes and validation part); None where the
    metric is not an accuracy or there is one class."""
    if metric not in ("val_acc", "train_acc") or curve.num_classes < 2:
        return None
    level = curve.majority or 1.0 / curve.num_classes   # no validation part: balanced classes taken
    n = curve.val_samples
    noise = CHANCE_SE * math.sqrt(level * (1 - level) / n) if n else 0.0
    return Chance(level, level + max(CHANCE_MARGIN * (1 - level), noise))


def chance_floor(metric: str, curve) -> Optional[float]:
    """Stage 2's asha.floor: chance's level, what a network that guesses one class scores. Not
    its bar (level + 10% of the rest, or 2 SE): early in a hard set's run, learning trials sit
    below that, and the floor prunes even a trial that is first at its rung."""
    level = chance(metric, curve)
    return None if level is None else level.level


def no_better_than_chance(best: Optional[float], chance_level: Optional[Chance]) -> bool:
    """Within a few points of guessing: 16.8% with 10 balanced classes is no model (issue #7)."""
    return chance_level is not None and not chance_level.above(best)


def too_few_steps(decision, epochs: int) -> Optional[str]:
    """Why a result at chance may be the schedule's length rather than the data or the model:
    the range test's loss fell over more steps than a whole run trained."""
    curve = decision.curve
    steps = epochs * curve.epoch_steps
    if not decision.informative or not steps or steps >= curve.steps:
        return None
    return (f"each run trained {steps} steps ({epochs} epochs of {curve.epoch_steps}), fewer than the "
            f"{curve.steps} over which the range test's loss fell: raise trainer.epochs")


def better(a: Optional[float], b: Optional[float], mode: str) -> bool:
    """``a`` at least as good as ``b`` by the metric's direction; None is never better."""
    return a is not None and (b is None or (a >= b if mode == "max" else a <= b))


def why_no_pilot(spec: SweepSpec, args, samples: int) -> Optional[str]:
    """None where smith trains a pilot (orchestrator/pilot.py), else why not (for the report):
    only where trials would run on this host, on CPUs, one process each."""
    r = spec.resources
    if args.no_pilot:
        return "--no-pilot"
    if args.address:
        return "trials run on the cluster's nodes"
    if r.gpus or r.ranks > 1:
        return "trials hold GPUs or several ranks, which Ray hands out"
    if samples == 1:
        return "--samples 1: the one trial is Tune's"
    return None


def check(spec: SweepSpec, args) -> Options:
    """smith's options against the spec, before any work (also where `submit --smith` sends the
    job)."""
    from tunesmith.orchestrator import lr_find
    lr_find.check_options(args.pick or lr_find.SMITH_PICK, args.start, args.end, args.steps, args.max_seconds)
    wd_preset = weight_decay_preset(spec, args.weight_decay)
    below, above = args.range or (BELOW, ABOVE)
    if below < 0 or above < 0 or below + above <= 0:
        raise ConfigError("--range", f"{below:g} {above:g}", "decades below and above the max LR: both >= 0, "
                          "not both 0")
    epochs = args.short_epochs or spec.train.trainer.epochs
    if epochs > spec.train.trainer.epochs:
        raise ConfigError("--short-epochs", epochs, f"must not exceed trainer.epochs ({spec.train.trainer.epochs})")
    coupled = args.coupling == "effective"
    stage2_spec(spec, WIDE, epochs, wd_preset, 1, coupled=coupled)   # valid for some band
    return Options(wd_preset, below, above, epochs, coupled, args.search)


def stage1_options(spec: SweepSpec, args) -> tuple:
    """The range test's arguments from smith's command line: lr-find's options, its time cap
    (--max-seconds) within a fifth of time_budget_s, and one trial's config and GPUs."""
    from tunesmith.orchestrator import lr_find
    budget = spec.time_budget_s
    cap = args.max_seconds if not budget else min(args.max_seconds, STAGE1_SHARE * budget)
    cfg, gpus = lr_find.as_one_trial(spec)
    return (cfg, args.start, args.end, args.steps, "linear" if args.linear else "exp", args.val_loss,
            args.pick, cap, gpus)
