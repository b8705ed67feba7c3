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
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from tunesmith.trainables.config import ConfigError, DatasetConfig
from tunesmith.trainables.folder_layout import classes_and_files, refuse_empty, split_folders

PARALLEL_FROM = 2000    # fewer files decode faster in one process than a pool starts
STATS_SAMPLE = 2000     # streaming: the normalisation statistics come from this many images
MODE_SAMPLE = 64        # dataset.channels unset: this many images' headers decide grey or colour
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")   # PIL's grey modes deeper than 8 bits
GREY_MODES = ("1", "L", "LA") + WIDE_MODES                     # PIL's modes without colour
MAX_PIXELS = 100_000_000   # an image past this is skipped and named: a decompression bomb, or a scan no
                           # CNN here trains on at full size (PIL itself only warns below 179 MP)


def _as_8bit(im):
    """A 16-bit, 32-bit or float grey image as 8-bit grey, scaled, where PIL's convert clips (a
    16-bit scan came out white): values above 255 are taken as 16-bit, floats up to 1 as [0, 1].
    The rule is fixed, not per image, so images keep their brightness relative to each other."""
    from PIL import Image
    a = np.asarray(im, dtype=np.float32)   # half float64's memory; the image is reduced already
    top = a.max() if a.size else 0.0
    if im.mode == "F" and top <= 1.0:
        a = a * 255.0
    elif im.mode != "F" and top > 255:
        a = a / 257.0
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")


def decode(path: str, size: int, mode: str) -> np.ndarray:
    """One image as uint8 C x size x size: converted to ``mode`` (L or RGB), resized bilinearly.
    The same function serves both paths, so both see the same pixels. A large image is brought
    toward the target size while it is decoded (a JPEG's DCT scaling, PIL's reduce) so that a scan
    never sits in memory at full depth; one past MAX_PIXELS is refused (skipped and named)."""
    from PIL import Image
    with Image.open(path) as im:
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise ValueError(f"{w}x{h} pixels, past the {MAX_PIXELS / 1e6:g}-megapixel limit")
        if im.format == "JPEG":
            im.draft(None, (size, size))   # decoded at 1/2, 1/4 or 1/8 scale where that still covers size
        factor = min(im.size) // (2 * size)
        if im.mode in WIDE_MODES:
            if im.mode.startswith("I;16"):
                im = im.convert("I")   # 4 bytes a pixel, which reduce takes
            if factor >= 2:
                im = im.reduce(factor)
            im = _as_8bit(im)
        elif factor >= 2:
            try:
                im = im.reduce(factor)
            except ValueError:   # a mode reduce does not take (a palette): resized below
                pass
        im = im.convert(mode).resize((size, size), Image.BILINEAR)
        arr = np.array(im, dtype=np.uint8)   # a copy: PIL's own buffer is read-only, which torch warns of
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


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


def _drop_rows(x: np.ndarray, y: torch.Tensor, bad: Sequence[int], n_train: int):
    """Remove the unreadable rows in place (each good row moves up), keeping the train rows
    first; the buffer is not copied."""
    drop = set(bad)
    keep = [i for i in range(len(x)) if i not in drop]
    for j, i in enumerate(keep):
        if i != j:
            x[j] = x[i]
    return x[:len(keep)], y[keep], sum(1 for i in keep if i < n_train)


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
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    layout: str = "one folder per class; validation split off by dataset.val_fraction"
    decoders: int = 1        # decoding processes: a core each, within the memory the largest image needs

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def describe(self) -> str:
        n = len(self.train_files) + len(self.val_files)
        how = (f"streaming, {self.workers()} workers" if self.streams else "in memory, shared")
        return (f"{how}: {n} images of {self.channels}x{self.size}x{self.size}, {_fmt_bytes(self.estimate)} decoded; "
                f"{self.layout}; {self.why}")

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
        from tunesmith.trainables.image_data import finish_split, split_index
        if self.explicit_val:
            files, labels, n_train = self.train_files + self.val_files, self.train_labels + self.val_labels, \
                len(self.train_files)
        else:
            tr, va = split_index(len(self.train_files), self.cfg)   # the same split as every loader's
            order = tr.tolist() + va.tolist()
            files = [self.train_files[i] for i in order]
            labels = [self.train_labels[i] for i in order]
            n_train = len(tr)
        x, bad = self._decode_all(files)
        self._check_unreadable()
        y = torch.tensor(labels, dtype=torch.int64)
        if bad:
            x, y, n_train = _drop_rows(x, y, bad, n_train)
        t = torch.from_numpy(x)
        data = finish_split(t[:n_train], y[:n_train], t[n_train:], y[n_train:], self.classes, 1 / 255)
        data.skipped = tuple(self.skipped)   # the sweep's driver names them (orchestrator/data_share.py)
        self._report()
        return data

    def _check_unreadable(self) -> None:
        total = len(self.train_files) + len(self.val_files)
        if total and len(self.skipped) * 2 > total:
            first = ", ".join(p for p, _ in self.skipped[:3])
            raise ConfigError("dataset.data_dir", self.cfg.data_dir,
                              f"{len(self.skipped)} of {total} images are unreadable (e.g. {first})")

    def _report(self) -> None:
        if self.skipped:
            print(skipped_text(self.cfg.data_dir, self.skipped), flush=True)

    # --- streaming ----------------------------------------------------------------------
    def stream(self):
        if self.explicit_val:
            train_f, train_y, val_f, val_y = self.train_files, self.train_labels, self.val_files, self.val_labels
        else:
            from tunesmith.trainables.image_data import split_index
            tr, va = split_index(len(self.train_files), self.cfg)
            train_f = [self.train_files[i] for i in tr.tolist()]
            train_y = [self.train_labels[i] for i in tr.tolist()]
            val_f = [self.train_files[i] for i in va.tolist()]
            val_y = [self.train_labels[i] for i in va.tolist()]
        # Statistics from an evenly spread sample: every image for small sets, as in memory.
        pick = np.linspace(0, len(train_f) - 1, min(len(train_f), STATS_SAMPLE)).round().astype(int)
        sample, bad = self._decode_all([train_f[i] for i in pick])
        self._check_unreadable_sample(len(pick))
        from tunesmith.trainables.image_data import stats
        keep = np.setdiff1d(np.arange(len(sample)), bad)
        mean, std = stats(torch.from_numpy(sample[keep]), 1 / 255)
        return StreamingData(train_f, torch.tensor(train_y, dtype=torch.int64), val_f,
                             torch.tensor(val_y, dtype=torch.int64), tuple(self.classes), mean, std,
                             self.size, self.mode, self.workers(), self.root)

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
    if train_dir is not None:
        classes, files, labels, other = classes_and_files(os.path.join(root, train_dir))
        refuse_empty(cfg, classes, labels, train_dir + "/")
        if val_dir is not None:
            vclasses, vfiles, vlabels, vother = classes_and_files(os.path.join(root, val_dir))
            if vclasses != classes:
                raise ConfigError("dataset.data_dir", cfg.data_dir, f"{train_dir}/ and {val_dir}/ hold different classes "
                                  f"({len(classes)} and {len(vclasses)})")
            if not vfiles:
                raise ConfigError("dataset.data_dir", cfg.data_dir, f"{val_dir}/ holds no images; fill it, or remove "
                                  f"it to split the validation set off {train_dir}/ by dataset.val_fraction")
            other += vother
        else:
            vfiles, vlabels = [], []
        layout = (f"{train_dir}/ for training, " + (f"{val_dir}/ for validation" if val_dir else
                  "validation split off it by dataset.val_fraction")
                  + (f"; {test_dir}/ left unread (no trial or selection reads a test set)" if test_dir else ""))
    else:
        classes, files, labels, other = classes_and_files(root)
        refuse_empty(cfg, classes, labels, "")
        vfiles, vlabels = [], []
        layout = FolderPlan.layout
    if len(classes) < 2:
        raise ConfigError("dataset.data_dir", cfg.data_dir, "needs at least two class subfolders")
    if len(files) + len(vfiles) < 2:
        raise ConfigError("dataset.data_dir", cfg.data_dir, f"found {len(files) + len(vfiles)} images; need at least 2")
    size = cfg.image_size or 32
    own, peak = sample_headers(files + vfiles)
    mode = ("L" if cfg.channels == 1 else "RGB") if cfg.channels else own
    channels = 1 if mode == "L" else 3
    memory = available_memory()
    workers = decode_workers(peak, memory)
    # the decoded set, and what the decoding processes hold at once while they make it
    estimate = (len(files) + len(vfiles)) * (channels * size * size + 8) + workers * peak
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
    return FolderPlan(cfg, root, classes, files, labels, vfiles, vlabels, size, mode, estimate, budget, streams,
                      why, other, explicit, layout=layout, decoders=workers)


def skipped_text(data_dir: str, skipped) -> str:
    """One line naming the unreadable images left out (the first five, and how many more)."""
    names = ", ".join(f"{p} ({why})" for p, why in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return f"imagefolder {data_dir}: skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''}: {names}{more}"


class _FileSet(torch.utils.data.Dataset):
    """Decodes one file per item. An unreadable file yields the next readable one (a stable
    choice, so epochs stay reproducible), and the item names it: the decoding worker's own output
    reaches no terminal, so the trial reports it and the sweep's driver names it."""

    def __init__(self, files: Sequence[str], size: int, mode: str, root: str):
        self.files, self.size, self.mode, self.root = list(files), size, mode, root

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        bad = []
        for k in range(len(self.files)):
            j = (i + k) % len(self.files)
            try:
                return torch.from_numpy(decode(self.files[j], self.size, self.mode)), i, bad
            except Exception as exc:   # noqa: BLE001
                bad.append((os.path.relpath(self.files[j], self.root), type(exc).__name__))
        raise ConfigError("dataset.data_dir", self.root, "no readable image")


def _collate(items):
    xs, idx, bad = zip(*items)
    return torch.stack(xs), torch.tensor(idx), [b for some in bad for b in some]


class StreamingData:
    """A folder read from disk batch by batch, in the trainer's permutation."""

    def __init__(self, train_files, train_y, val_files, val_y, classes, mean, std, size, mode, workers, root):
        from tunesmith.trainables.image_data import Normaliser
        self.train_files, self.train_y, self.val_files, self.val_y = train_files, train_y, val_files, val_y
        self.classes, self.mean, self.std, self.scale = classes, mean, std, 1 / 255
        self.size, self.mode, self.workers, self.root = size, mode, workers, root
        self.normalise = Normaliser(self.scale, mean, std)
        self.how = f"streaming, {workers} workers"
        self.device = torch.device("cpu")
        self._train = _FileSet(train_files, size, mode, root)
        self._val = _FileSet(val_files, size, mode, root)
        self.met_unreadable: dict = {}   # file -> why, as decoding met them (the trainer reports them)

    num_classes = property(lambda self: len(self.classes))
    shape = property(lambda self: (1 if self.mode == "L" else 3, self.size, self.size))
    nbytes = property(lambda self: 0)

    def to(self, device) -> "StreamingData":
        self.device = torch.device(device)
        return self

    def _loader(self, dataset, batches):
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=self.workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.workers else None,
            multiprocessing_context="fork" if self.workers else None)

    def epoch(self, perm: torch.Tensor, batch: int, steps: int):
        chunks = [perm[i * batch:(i + 1) * batch].tolist() for i in range(steps)]
        y_all = self.train_y
        for x, idx, bad in self._loader(self._train, chunks):
            self.met_unreadable.update(bad)
            yield self.normalise(x.to(self.device, non_blocking=True)), y_all[idx].to(self.device)

    def val_batches(self, batch: int):
        chunks = [list(range(i, min(i + batch, len(self.val_files)))) for i in range(0, len(self.val_files), batch)]
        for x, idx, bad in self._loader(self._val, chunks):
            self.met_unreadable.update(bad)
            yield self.normalise(x.to(self.device, non_blocking=True)), self.val_y[idx].to(self.device)

    def val_sample(self, n: int):
        n = min(n, len(self.val_files))
        x = torch.stack([self._val[i][0] for i in range(n)])
        return self.normalise(x.to(self.device)), self.val_y[:n].to(self.device)
