"""Find a deepfake dataset on disk and index it: which images, which split, which label.

Accepted layouts (folder names in any case, images .jpg/.jpeg/.png in any case)::

    140k Real and Fake Faces      real_vs_fake/real-vs-fake/{train,valid,test}/{real,fake}/*.jpg
    deepfake-and-real-images      Dataset/{Train,Validation,Test}/{Real,Fake}/*.jpg
    generic                       ROOT/{train,valid|val|validation,test}/{real,fake}/*.jpg

The user may point at ROOT or at any folder up to ``MAX_DEPTH`` levels above it. Only the train
split is required: a missing validation or test split is carved from train (stratified, seeded).

Nothing is dropped silently: unreadable or non-image files go to ``DatasetIndex.skipped`` with
the reason, ignored folders and carved splits go to ``DatasetIndex.notes``.

Label convention: real = 0, fake = 1. A sample id is the image path relative to the root, with
``/`` separators (``train/fake/0001.jpg``); it is what the prediction store records.
"""

from __future__ import annotations

import os
from collections import Counter

from pydantic import BaseModel, ValidationError, field_validator

from dfsearch.data.images import CHECKS, IMAGE_EXTENSIONS, check_files, is_image_name
from dfsearch.errors import DfsearchError

SPLITS = ("train", "valid", "test")
SPLIT_NAMES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
CLASSES = {"real": 0, "fake": 1}
CLASS_NAMES = {0: "real", 1: "fake"}
MAX_DEPTH = 3  # how many folder levels below the given path a root may sit

LAYOUT_140K = "140k-real-and-fake-faces"
LAYOUT_OPENFORENSICS = "deepfake-and-real-images"
LAYOUT_GENERIC = "generic"

ACCEPTED_LAYOUTS = """\
accepted layouts (folder names in any case; images .jpg/.jpeg/.png in any case):
  140k Real and Fake Faces:  real_vs_fake/real-vs-fake/{train,valid,test}/{real,fake}/*.jpg
  deepfake-and-real-images:  Dataset/{Train,Validation,Test}/{Real,Fake}/*.jpg
  generic:                   ROOT/train/real/*.jpg
                             ROOT/train/fake/*.jpg
                             ROOT/valid/...   (optional; also 'val' or 'validation')
                             ROOT/test/...    (optional)
pass ROOT itself or a folder up to 3 levels above it"""

INDEX_FIELDS = "given, root, layout, splits {train, valid, test: [[sample_id, label], ...]}, skipped, notes"
_NAME_REASON = f"not an image file name (accepted: {', '.join(IMAGE_EXTENSIONS)}, any case)"


class DatasetIndex(BaseModel):
    """Where a dataset is and what is in it; plain data, JSON round-trippable (pydantic)."""

    given: str  # the path the user passed
    root: str  # absolute path of the folder that directly contains the split folders
    layout: str  # LAYOUT_140K | LAYOUT_OPENFORENSICS | LAYOUT_GENERIC
    splits: dict[str, list[tuple[str, int]]]  # "train"/"valid"/"test" -> sorted (sample_id, label)
    skipped: list[dict[str, str]] = []  # {"path": relative posix path, "reason": str}
    notes: list[str] = []

    @field_validator("splits")
    @classmethod
    def _all_splits(cls, v):
        missing = [s for s in SPLITS if s not in v]
        if missing:
            raise ValueError(f"no {', '.join(map(repr, missing))} split")
        return v

    def counts(self) -> dict:
        """``{"train": {"real": N, "fake": N}, "valid": {...}, "test": {...}}``."""
        out = {}
        for split in SPLITS:
            c = Counter(label for _, label in self.splits.get(split, []))
            out[split] = {"real": c[0], "fake": c[1]}
        return out

    def digest(self) -> str:
        """A short hash of every split's (sample_id, label) list: the same files, the same digest
        (W&B's dataset artifact and the report name the data by it)."""
        import hashlib

        h = hashlib.sha256()
        for split in sorted(self.splits):
            for sid, label in self.splits[split]:
                h.update(f"{split}/{sid}/{label}\n".encode())
        return h.hexdigest()[:16]

    def to_json(self) -> dict:
        """A plain dict (lists, str, int) that ``json.dumps`` accepts and ``from_json`` reads back."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: dict | str) -> DatasetIndex:
        """Rebuild an index from ``to_json()`` output (the dict, or its JSON text); DfsearchError
        naming the bad field(s) otherwise."""
        try:
            return cls.model_validate_json(data) if isinstance(data, (str, bytes)) else cls.model_validate(data)
        except ValidationError as e:
            raise DfsearchError(f"dataset index is malformed: {_describe(e)}") from None


def _describe(e: ValidationError) -> str:
    """One line naming the bad fields of a pydantic error: ``missing field(s) root; field splits.train.0: ...``."""
    where = [(".".join(map(str, x["loc"])) or "(top)", x) for x in e.errors()]
    missing = [loc for loc, x in where if x["type"] == "missing"]
    parts = ([f"missing field(s) {', '.join(missing)}"] if missing else [])
    parts += [f"field {loc}: {x['msg'].removeprefix('Value error, ')}" for loc, x in where if x["type"] != "missing"][:3]
    return "; ".join(parts) + f" (expected: {INDEX_FIELDS})"


def discover(path, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
             check: str = "header", progress: bool = False) -> DatasetIndex:
    """Find the dataset under ``path`` and index its images.

    ``check`` says how hard each file is looked at: ``"header"`` (default) parses the image header
    only, ``"full"`` decodes every image (catches truncated files), ``"none"`` trusts the extension.
    ``val_fraction`` / ``test_fraction`` (of the train images) are only used when that split is
    missing and must be carved from train; ``seed`` makes the carving deterministic.
    ``progress`` shows a bar on stderr while files are checked (header: ~20k files/s; full
    decoding of 256x256 JPEGs: ~2k files/s).

    Raises DfsearchError for a missing or empty path, no recognisable layout, a split with no
    readable images, or a split missing a class; nothing expensive runs before the layout is valid.
    """
    index, _ = discover_with_sizes(path, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                   check=check, progress=progress, sizes=False)
    return index


def discover_with_sizes(path, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                        check: str = "header", progress: bool = False,
                        sizes: bool = True) -> tuple[DatasetIndex, Counter]:
    """``discover`` plus a Counter of image sizes ``(width, height)`` over the kept images.

    Sizes come from the image headers in the same pass as the check (empty when ``check="none"``
    or ``sizes=False``). Used by ``inspect``.
    """
    if check not in CHECKS:
        raise DfsearchError(f"check={check!r} is not accepted (accepted: {', '.join(CHECKS)})")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise DfsearchError(f"{name}={value!r} is not accepted (accepted: a number between 0 and 1, exclusive)")
    if val_fraction + test_fraction >= 1.0:
        raise DfsearchError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no training images "
            "(accepted: a sum below 1)"
        )

    given = os.fspath(path)
    root = find_root(given)
    layout, split_dirs, files, skipped, notes = _list_root(root)

    # Check the files (the expensive part), then drop the unreadable ones.
    sample_ids = [sid for split in files for sid, _ in files[split]]
    results = check_files(root, sample_ids, check, progress, sizes)
    size_counts: Counter = Counter()
    splits: dict[str, list[tuple[str, int]]] = {}
    for split, items in files.items():
        kept = []
        for sid, label in items:
            reason, size = results[sid]
            if reason is None:
                kept.append((sid, label))
                if size is not None:
                    size_counts[size] += 1
            else:
                skipped.append({"path": sid, "reason": reason})
        splits[split] = kept
    skipped.sort(key=lambda s: s["path"])

    for split, items in splits.items():
        _require_both_classes(root, split, split_dirs[split], items, skipped)

    # Carve missing splits from train: test first, then valid, both as fractions of the original.
    n_train = len(splits["train"])
    if "test" not in splits:
        splits["train"], splits["test"] = _carve(splits["train"], test_fraction, seed, "test")
        notes.append(
            f"no test split under {root}: carved a stratified {test_fraction * 100:g}% of train "
            f"({len(splits['test'])} images) as test, seed {seed}"
        )
    if "valid" not in splits:
        fraction = min(val_fraction * n_train / len(splits["train"]), 0.99)
        splits["train"], splits["valid"] = _carve(splits["train"], fraction, seed, "valid")
        notes.append(
            f"no validation split under {root}: carved a stratified {val_fraction * 100:g}% of train "
            f"({len(splits['valid'])} images) as valid, seed {seed}"
        )

    index = DatasetIndex(given=given, root=root, layout=layout, splits={s: sorted(splits[s]) for s in SPLITS},
                         skipped=skipped, notes=notes)
    return index, size_counts


# ----------------------------------------------------------------------------- finding the root


def find_root(path) -> str:
    """The absolute path of the one folder at or below ``path`` that holds the split folders."""
    given = os.fspath(path)
    start = os.path.abspath(os.path.expanduser(given))
    if not os.path.exists(start):
        raise DfsearchError(f"dataset path {given} does not exist; pass the dataset folder\n{ACCEPTED_LAYOUTS}")
    if not os.path.isdir(start):
        raise DfsearchError(f"dataset path {given} is a file, not a folder; pass the dataset folder\n{ACCEPTED_LAYOUTS}")
    visible = [e.name for e in _scandir(start) if not e.name.startswith(".")]
    if not visible:
        raise DfsearchError(f"dataset folder {given} is empty; expected images in one of the layouts below\n{ACCEPTED_LAYOUTS}")

    candidates = []
    queue = [(start, 0)]
    while queue:  # breadth first, sorted: deterministic
        folder, depth = queue.pop(0)
        if _is_root(folder):
            candidates.append(folder)
            continue  # never look for a root inside a root
        if depth < MAX_DEPTH:
            queue.extend((p, depth + 1) for name, p in _subdirs(folder) if not _hidden(name))

    if len(candidates) > 1:
        listing = "\n".join(f"  {c}" for c in candidates)
        raise DfsearchError(
            f"dataset path {given} holds {len(candidates)} datasets:\n{listing}\npass one of these folders instead"
        )
    if not candidates:
        hint = ""
        class_dirs = [name for name, _ in _subdirs(start) if name.lower() in CLASSES]
        if class_dirs:
            hint = (
                f"\n{given} holds class folders ({', '.join(class_dirs)}) but no split folders; "
                "put them in a train/ folder, or pass the folder that holds train/"
            )
        raise DfsearchError(
            f"no dataset layout found in {given} (searched {MAX_DEPTH} levels down for a folder "
            f"holding train/real or train/fake){hint}\n{ACCEPTED_LAYOUTS}"
        )
    return candidates[0]


def _is_root(folder: str) -> bool:
    """True when ``folder`` holds a train split that holds at least one class folder."""
    for name, path in _subdirs(folder):
        if SPLIT_NAMES.get(name.lower()) == "train":
            if any(n.lower() in CLASSES for n, _ in _subdirs(path)):
                return True
    return False


def _scandir(folder: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except PermissionError:
        raise DfsearchError(f"cannot read folder {folder}: permission denied") from None


def _subdirs(folder: str) -> list[tuple[str, str]]:
    return [(e.name, e.path) for e in _scandir(folder) if _is_dir(e)]


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


# ----------------------------------------------------------------------------- listing files


def _layout_name(root: str, split_dirs: dict[str, str]) -> str:
    head, name = os.path.split(root)
    if name.lower() == "real-vs-fake" and os.path.basename(head).lower() == "real_vs_fake":
        return LAYOUT_140K
    if name.lower() == "dataset" and {d.lower() for d in split_dirs.values()} == {"train", "validation", "test"}:
        return LAYOUT_OPENFORENSICS
    return LAYOUT_GENERIC


def _list_root(root: str):
    """Walk the split and class folders without opening any image.

    Returns ``(layout, split_dirs, files, skipped, notes)``: ``split_dirs`` maps split -> folder
    name, ``files`` maps split -> [(sample_id, label)] of files with an image name. Raises
    DfsearchError for duplicate or missing split/class folders, and classes with no image files.
    """
    skipped: list[dict] = []
    notes: list[str] = []

    split_dirs: dict[str, str] = {}
    for entry in _scandir(root):
        if _is_dir(entry):
            split = SPLIT_NAMES.get(entry.name.lower())
            if split is None:
                notes.append(f"ignored folder {entry.name}: not a split (accepted: train, valid|val|validation, test)")
            elif split in split_dirs:
                raise DfsearchError(
                    f"dataset {root} has two folders for the {split} split: {split_dirs[split]}, {entry.name}; keep one"
                )
            else:
                split_dirs[split] = entry.name
        elif is_image_name(entry.name):
            skipped.append({"path": entry.name, "reason": "image outside the split folders (accepted: train/, valid/, test/)"})
    split_dirs = {s: split_dirs[s] for s in SPLITS if s in split_dirs}
    layout = _layout_name(root, split_dirs)

    files: dict[str, list[tuple[str, int]]] = {}
    for split, split_name in split_dirs.items():
        class_dirs: dict[int, str] = {}
        for entry in _scandir(os.path.join(root, split_name)):
            rel = f"{split_name}/{entry.name}"
            if _is_dir(entry):
                label = CLASSES.get(entry.name.lower())
                if label is None:
                    notes.append(f"ignored folder {rel}: not a class (accepted: real, fake)")
                elif label in class_dirs:
                    raise DfsearchError(
                        f"split {split} in {root} has two folders for class {CLASS_NAMES[label]}: "
                        f"{split_name}/{class_dirs[label]}, {rel}; keep one"
                    )
                else:
                    class_dirs[label] = entry.name
            else:
                skipped.append({"path": rel, "reason": "file outside the class folders (accepted: real/, fake/)"})
        items = []
        for label in (0, 1):
            if label not in class_dirs:
                raise DfsearchError(
                    f"split {split} ({os.path.join(root, split_name)}) has no {CLASS_NAMES[label]} folder; "
                    f"each split needs both real/ and fake/ folders (any case)"
                )
            rel_dir = f"{split_name}/{class_dirs[label]}"
            found = _list_images(root, rel_dir, skipped)
            if not found:
                raise DfsearchError(
                    f"split {split} has no {CLASS_NAMES[label]} images: {os.path.join(root, rel_dir)} holds no "
                    f".jpg/.jpeg/.png files"
                )
            items.extend((sid, label) for sid in found)
        files[split] = items

    if "train" not in files:  # _is_root saw one; only a race gets here
        raise DfsearchError(f"dataset {root} has no train folder\n{ACCEPTED_LAYOUTS}")
    return layout, split_dirs, files, skipped, notes


def _list_images(root: str, rel_dir: str, skipped: list[dict]) -> list[str]:
    """Relative paths of files with an image name under ``root/rel_dir`` (recursively)."""
    found = []
    seen = set()
    stack = [rel_dir]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel)
        real = os.path.realpath(full)
        if real in seen:  # symlink loop
            continue
        seen.add(real)
        for entry in _scandir(full):
            sid = f"{rel}/{entry.name}"
            if _is_dir(entry):
                stack.append(sid)
            elif not entry.is_file():
                skipped.append({"path": sid, "reason": "not a regular file (broken link?)"})
            elif is_image_name(entry.name):
                found.append(sid)
            else:
                skipped.append({"path": sid, "reason": _NAME_REASON})
    return found


def fake_source(sample_id: str) -> str | None:
    """The generator a fake's sample id names, as the folder right below its class folder
    (``test/fake/blend/000001.jpg`` -> ``blend``; the embedded benchmark's families, or a user's
    ``fake/<method>/``); None for a fake directly in its class folder or a real image."""
    parts = sample_id.split("/")
    for i, part in enumerate(parts[:-2]):
        if CLASSES.get(part.lower()) == 1:
            return parts[i + 1]
    return None


# ----------------------------------------------------------------------------- validating and carving


def _require_both_classes(root, split, split_name, items, skipped) -> None:
    present = Counter(label for _, label in items)
    for label in (0, 1):
        if present[label] == 0:
            cls = CLASS_NAMES[label]
            bad = [s for s in skipped if s["path"].startswith(f"{split_name}/")]
            shown = "".join(f"\n  {s['path']}: {s['reason']}" for s in bad[:5])
            more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
            what = "no readable images at all" if not items else f"no readable {cls} images"
            raise DfsearchError(
                f"split {split} ({os.path.join(root, split_name)}) has {what}; "
                f"each split needs readable real and fake images. Skipped files:{shown}{more}"
            )


def _carve(items, fraction: float, seed: int, name: str):
    """Split ``items`` into (rest, carved) with ``fraction`` carved, stratified by label, seeded."""
    from sklearn.model_selection import train_test_split  # here: sklearn takes seconds to import

    items = sorted(items)
    labels = [label for _, label in items]
    try:
        rest, carved = train_test_split(items, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError as e:
        counts = Counter(labels)
        raise DfsearchError(
            f"cannot carve a {name} split from train ({counts[0]} real, {counts[1]} fake images, "
            f"fraction {fraction:.2g}): {e}. Add a {name}/ folder or more train images"
        ) from None
    for part, what in ((rest, "train"), (carved, name)):
        if len({label for _, label in part}) < 2:
            raise DfsearchError(
                f"carving a {name} split from train leaves {what} with one class; "
                f"add a {name}/ folder or more train images"
            )
    return sorted(rest), sorted(carved)
