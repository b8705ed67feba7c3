"""Image folders as users have them: class folders (nested inside as deep as they like), mixed
formats, sizes and modes, an optional ``train/`` and ``val/`` side by side, corrupt files.

``scan`` lists the files and decides, before anything is decoded, whether the decoded set fits
the memory budget (``dataset.memory_budget``, a share of the node's available memory). In
memory, the images are decoded in parallel into one preallocated uint8 array (peak memory about
the final size). Otherwise they stream: DataLoader workers decode, resize and batch them in the
trainer's permutation. An unreadable image is skipped and named, never fatal; a folder where
most images are unreadable is bad input.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from tunesmith.trainables.config import ConfigError, DatasetConfig
from tunesmith.trainables.folder_layout import classes_and_files, refuse_empty, split_folders
from tunesmith.trainables.streaming import MAX_PIXELS, WIDE_MODES, StreamingData, decode

PARALLEL_FROM = 2000    # fewer files decode faster in one process than a pool starts
STATS_SAMPLE = 2000     # streaming: the normalisation statistics come from this many images
MODE_SAMPLE = 64        # dataset.channels unset: this many images' headers decide grey or colour
GREY_MODES = ("1", "L", "LA") + WIDE_MODES                     # PIL's modes without colour


def decode_workers(peak_bytes: int, memory: int) -> int:
    """Decoding processes: one a core, but no more than a quarter of the free memory holds at
    the largest image's decoding peak."""
    return max(1, min(os.cpu_count() or 1, memory // 4 // max(1, peak_bytes)))


def _decode_chunk(args) -> Tuple[int, np.ndarray, List[Tuple[int, str]]]:
    start, paths, size, mode, channels = args
    out = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    bad = []
    for i, p in enumerate(paths):
        try:
            out[i] = decode(p, size, mode)
        except Exception as exc:   # noqa: BLE001 - any unreadable file is skipped and named
            bad.append((start + i, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"))
    return start, out, bad


def _drop_rows(x: np.ndarray, y: torch.Tensor, bad: Sequence[int], ends: Tuple[int, ...]):
    """Remove the unreadable rows in place (each good row moves up), keeping the parts in order;
    the buffer is not copied. ``ends``: where each part but the last ends, as they end after."""
    drop = set(bad)
    keep = [i for i in range(len(x)) if i not in drop]
    for j, i in enumerate(keep):
        if i != j:
            x[j] = x[i]
    return x[:len(keep)], y[keep], tuple(sum(1 for i in keep if i < end) for end in ends)


def own_mode(files: Sequence[str]) -> str:
    """The folder's own colour, from the headers of MODE_SAMPLE images spread over it (nothing is
    decoded): "L" when every one read is grey, else "RGB". A palette image counts as colour."""
    return sample_headers(files)[0]


def sample_headers(files: Sequence[str]) -> Tuple[str, int]:
    """(the folder's own colour mode, the decoding peak in bytes of its largest image) from the
    headers of MODE_SAMPLE images spread over it; nothing is decoded."""
    from PIL import Image
    step = max(1, len(files) // MODE_SAMPLE)
    seen, grey, peak = 0, True, 0
    for path in files[::step][:MODE_SAMPLE]:
        try:
            with Image.open(path) as im:
                grey = grey and im.mode in GREY_MODES
                w, h = im.size
                peak = max(peak, min(w * h, MAX_PIXELS) * (4 if im.mode in WIDE_MODES else len(im.getbands())) * 2)
                seen += 1
        except Exception:   # noqa: BLE001 - an unreadable file is skipped at decoding, and named
            continue
    return ("L" if seen and grey else "RGB"), peak


def available_memory() -> int:
    import psutil   # a dependency
    return int(psutil.virtual_memory().available)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000


@dataclass
class FolderPlan:
    cfg: DatasetConfig
    root: str
    classes: List[str]
    train_files: List[str]
    train_labels: List[int]
    val_files: List[str]
    val_labels: List[int]
    size: int
    mode: str
    estimate: int            # bytes of the decoded set in memory
    budget: int
    streams: bool
    why: str
    non_images: int = 0
    explicit_val: bool = False
    test_files: List[str] = field(default_factory=list)    # a test/ folder's; else split off by test_fraction
    test_labels: List[int] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    layout: str = "one folder per class; validation split off by dataset.val_fraction"
    decoders: int = 1        # decoding processes: a core each, within the memory the largest image needs

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def describe(self) -> str:
        tr, _, va, _, te, _ = self.parts()
        how = (f"streaming, {self.workers()} workers" if self.streams else "in memory, shared")
        coarse = f", one validation image is {100 / len(va):.3g} points of accuracy" if 0 < len(va) < 50 else ""
        return (f"{how}: {len(tr) + len(va) + len(te)} images of {self.channels}x{self.size}x{self.size} "
                f"({len(tr)} training, {len(va)} validation, {len(te)} test{coarse}), "
                f"{_fmt_bytes(self.estimate)} decoded; {self.layout}; {self.why}")

    def workers(self) -> int:
        return self.cfg.workers or max(1, min(4, os.cpu_count() or 1))

    # --- in memory ----------------------------------------------------------------------
    def _decode_all(self, files: Sequence[str]) -> Tuple[np.ndarray, List[int]]:
        """uint8 N x C x S x S, and the indices of the files that could not be read."""
        out = np.zeros((len(files), self.channels, self.size, self.size), dtype=np.uint8)
        step = 256
        jobs = [(i, list(files[i:i + step]), self.size, self.mode, self.channels) for i in range(0, len(files), step)]
        bad: List[Tuple[int, str]] = []
        if len(files) >= PARALLEL_FROM and self.decoders > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(self.decoders, mp_context=multiprocessing.get_context("fork")) as pool:
                results = pool.map(_decode_chunk, jobs)
                for start, chunk, b in results:
                    out[start:start + len(chunk)] = chunk
                    bad += b
        else:
            for job in jobs:
                start, chunk, b = _decode_chunk(job)
                out[start:start + len(chunk)] = chunk
                bad += b
        for i, why in bad:
            self.skipped.append((os.path.relpath(files[i], self.root), why))
        return out, [i for i, _ in bad]

    def load(self):
        """Decode into one uint8 buffer, train rows first, so that the split is two views of it
        and no row is ever copied: the peak stays near the final size."""
        from tunesmith.trainables.image_data import finish_split
        parts = self.parts()
        files = parts[0] + parts[2] + parts[4]
        labels = parts[1] + parts[3] + parts[5]
        n_train, n_val = len(parts[0]), len(parts[2])
        x, bad = self._decode_all(files)
        self._check_unreadable()
        y = torch.tensor(labels, dtype=torch.int64)
        if bad:
            x, y, (n_train, n_val) = _drop_rows(x, y, bad, (n_train, n_train + n_val))
            n_val -= n_train
        t = torch.from_numpy(x)
        v = n_train + n_val
        test = (t[v:], y[v:]) if len(t) > v else (None, None)
        data = finish_split(t[:n_train], y[:n_train], t[n_train:v], y[n_train:v], self.classes, 1 / 255, *test)
        data.skipped = tuple(self.skipped)   # the sweep's driver names them (orchestrator/data_share.py)
        self._report()
        return data

    def _check_unreadable(self) -> None:
        total = len(self.train_files) + len(self.val_files) + len(self.test_files)
        if total and len(self.skipped) * 2 > total:
            first = ", ".join(p for p, _ in self.skipped[:3])
            raise ConfigError("dataset.data_dir", self.cfg.data_dir,
                              f"{len(self.skipped)} of {total} images are unreadable (e.g. {first})")

    def _report(self) -> None:
        if self.skipped:
            say_skipped(self.cfg.data_dir, self.skipped)

    # --- streaming ----------------------------------------------------------------------
    def stream(self):
        train_f, train_y, val_f, val_y, test_f, test_y = self.parts()
        # Statistics from an evenly spread sample: every image for small sets, as in memory.
        pick = np.linspace(0, len(train_f) - 1, min(len(train_f), STATS_SAMPLE)).round().astype(int)
        sample, bad = self._decode_all([train_f[i] for i in pick])
        self._check_unreadable_sample(len(pick))
        from tunesmith.trainables.image_data import stats
        keep = np.setdiff1d(np.arange(len(sample)), bad)
        mean, std = stats(torch.from_numpy(sample[keep]), 1 / 255)
        return StreamingData(train_f, torch.tensor(train_y, dtype=torch.int64), val_f,
                             torch.tensor(val_y, dtype=torch.int64), tuple(self.classes), mean, std,
                             self.size, self.mode, self.workers(), self.root, test_f,
                             torch.tensor(test_y, dtype=torch.int64))

    def parts(self) -> Tuple[List[str], List[int], List[str], List[int], List[str], List[int]]:
        """(train, validation, test) files and labels: a val/ and a test/ folder are their own
        parts, and what is missing is split off the training files by split_seed (the same
        split as every loader's)."""
        from tunesmith.trainables.image_data import split_index
        own_val, own_test = self.explicit_val, bool(self.test_files) or not self.cfg.test_fraction
        if own_val and own_test:
            return (self.train_files, self.train_labels, self.val_files, self.val_labels,
                    self.test_files, self.test_labels)
        tr, va, te = (i.tolist() for i in split_index(len(self.train_files), self.cfg, test=not own_test,
                                                      val=not own_val))
        files, labels = self.train_files, self.train_labels
        val = (self.val_files, self.val_labels) if own_val else ([files[i] for i in va], [labels[i] for i in va])
        test = (self.test_files, self.test_labels) if own_test else ([files[i] for i in te], [labels[i] for i in te])
        return (*self._per_class([files[i] for i in tr], [labels[i] for i in tr]), *val, *test)

    def _per_class(self, files: List[str], labels: List[int]) -> Tuple[List[str], List[int]]:
        """``dataset.train_per_class``: the first N training files of each class in split order,
        as ImageData.cut takes them, cut before anything is decoded (in memory or streamed)."""
        cap = self.cfg.train_per_class
        if not cap:
            return files, labels
        taken: Dict[int, int] = {}
        kept_files, kept_labels = [], []
        for f, y in zip(files, labels):
            if taken.get(y, 0) < cap:
                taken[y] = taken.get(y, 0) + 1
                kept_files.append(f)
                kept_labels.append(y)
        return kept_files, kept_labels

    def _check_unreadable_sample(self, n: int) -> None:
        if n and len(self.skipped) * 2 > n:
            first = ", ".join(p for p, _ in self.skipped[:3])
            raise ConfigError("dataset.data_dir", self.cfg.data_dir,
                              f"{len(self.skipped)} of {n} images sampled are unreadable (e.g. {first})")


def scan(cfg: DatasetConfig, budget: Optional[int] = None) -> FolderPlan:
    """List the folder and decide in memory or streaming; nothing is decoded yet."""
    from tunesmith.trainables.data_check import check_dataset_files
    check_dataset_files(cfg)
    root = os.path.expanduser(cfg.data_dir)
    train_dir, val_dir, test_dir = split_folders(root)
    explicit = train_dir is not None and val_dir is not None
    vfiles, vlabels, efiles, elabels = [], [], [], []
    if train_dir is not None:
        classes, files, labels, other = classes_and_files(os.path.join(root, train_dir))
        refuse_empty(cfg, classes, labels, train_dir + "/")
        if val_dir is not None:
            vfiles, vlabels, vother = _part(cfg, root, val_dir, train_dir, classes, "validation", "val_fraction")
            other += vother
        if test_dir is not None and cfg.test_fraction:
            efiles, elabels, eother = _part(cfg, root, test_dir, train_dir, classes, "test", "test_fraction")
            other += eother
        test = (f"{test_dir}/ for the test" if test_dir and cfg.test_fraction else
                "no test split (dataset.test_fraction 0)" if not cfg.test_fraction else
                "test split off it by dataset.test_fraction")
        layout = (f"{train_dir}/ for training, " + (f"{val_dir}/ for validation" if val_dir else
                  "validation split off it by dataset.val_fraction") + f"; {test}")
    else:
        classes, files, labels, other = classes_and_files(root)
        refuse_empty(cfg, classes, labels, "")
        layout = FolderPlan.layout + ("; test split off by dataset.test_fraction" if cfg.test_fraction else
                                      "; no test split (dataset.test_fraction 0)")
    if len(classes) < 2:
        raise ConfigError("dataset.data_dir", cfg.data_dir, "needs at least two class subfolders")
    if len(files) + len(vfiles) < 2:
        raise ConfigError("dataset.data_dir", cfg.data_dir, f"found {len(files) + len(vfiles)} images; need at least 2")
    size = cfg.image_size or 32
    own, peak = sample_headers(files + vfiles)   # a test/ folder's images are not looked at
    mode = ("L" if cfg.channels == 1 else "RGB") if cfg.channels else own
    channels = 1 if mode == "L" else 3
    memory = available_memory()
    workers = decode_workers(peak, memory)
    plan = FolderPlan(cfg, root, classes, files, labels, vfiles, vlabels, size, mode, 0, 0, False, "",
                      other, explicit, efiles, elabels, layout=layout, decoders=workers)
    decoded = sum(len(p) for p in plan.parts()[::2])   # every file, or as many as train_per_class leaves
    # the decoded set, and what the decoding processes hold at once while they make it
    estimate = decoded * (channels * size * size + 8) + workers * peak
    budget = budget if budget is not None else int(cfg.memory_budget * memory)
    shown = f"the budget is {_fmt_bytes(budget)} ({cfg.memory_budget:g} of available memory, dataset.memory_budget)"
    if cfg.stream is True:
        streams, why = True, "dataset.stream is true"
    elif estimate > budget:
        if cfg.stream is False:
            raise ConfigError("dataset.stream", False, f"the decoded images take {_fmt_bytes(estimate)} but {shown}; "
                              "set dataset.stream: true (or leave it unset) or raise dataset.memory_budget")
        streams, why = True, f"over the memory budget: {shown}"
    else:
        streams, why = False, f"within the memory budget: {shown}"
    plan.estimate, plan.budget, plan.streams, plan.why = estimate, budget, streams, why
    return plan


def _part(cfg: DatasetConfig, root: str, where: str, train_dir: str, classes, what: str, share: str):
    """(files, labels, non-images) of a val/ or test/ folder beside ``train_dir``."""
    pclasses, pfiles, plabels, pother = classes_and_files(os.path.join(root, where))
    if pclasses != classes:
        raise ConfigError("dataset.data_dir", cfg.data_dir, f"{train_dir}/ and {where}/ hold different classes "
                          f"({len(classes)} and {len(pclasses)})")
    if not pfiles:
        raise ConfigError("dataset.data_dir", cfg.data_dir, f"{where}/ holds no images; fill it, or remove "
                          f"it to split the {what} set off {train_dir}/ by dataset.{share}")
    return pfiles, plabels, pother


_SAID: set = set()   # (folder, files) already named by this process


def say_skipped(data_dir: str, skipped) -> None:
    """``skipped_text``, printed once per process for the same files: smith's range test reads the
    folder in its driver, and then its sweep names what the shared load skipped, the same line."""
    key = (data_dir, tuple(sorted(p for p, _ in skipped)))
    if key not in _SAID:
        _SAID.add(key)
        print(skipped_text(data_dir, skipped), flush=True)


def skipped_text(data_dir: str, skipped) -> str:
    """One line naming the unreadable images left out (the first five, and how many more)."""
    names = ", ".join(f"{p} ({why})" for p, why in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return f"imagefolder {data_dir}: skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''}: {names}{more}"


