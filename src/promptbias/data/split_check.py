"""The split boundary: what every split entry must be, checked once wherever split data comes in.

    check_items(raw["train"], path, "train", fix, n_classes=10)   # a source split file's list, at fetch
    check_split(split, path, fix)                # a normalised split: data/raw/<ds>.json (fetch and every read)
    check_fewshot(few, path, split, fix)         # data/splits/<ds>/shot<K>_seed<S>.json, against its split
    missing = check_files(folder, split, path, fix)   # at fetch: every image on disk, inside the dataset
    image = image_path(folder, rel)              # the one join of a split path to its dataset folder to open it

An entry is ``[relative_path, label, classname]``: a str, an int (not a bool, float or str) and a str.
Labels lie in ``[0, n_classes)`` — ``n_classes`` is ``len(classnames)`` of the normalised split (the
registry's ``num_classes`` for a source file, when it declares one); every label of ``classnames`` has an
image. Class names agree with labels: one name per label, and in a normalised split the name of label
``y`` is ``classnames[y]`` (as written, or with underscores as spaces). Two labels may share a name: CLIP's
and CoOp's ImageNet class names do ('missile' and 'sunglasses' name two classes each). A path is a non-empty, relative,
normalised POSIX path — no leading ``/``, no ``.``/``..``/empty component, no backslash, no NUL or other
control character — and names each image once across train, val and test (a test image in train would
inflate the accuracy). These lexical checks run on every read; on an ImageNet-sized split (1.33 M
entries) they add about 1 s of CPU to the 1.5 s of parsing its json (one Python loop for types, labels
and names; C-level ``map``/``set`` passes for paths and repeats).

Symbolic links are checked where a file is touched: :func:`check_files` at fetch (every image, grouped by
folder: one ``lstat`` per image plus one ``realpath`` per folder) and :func:`image_path` whenever an image
is opened. The dataset folder's top-level entries are where the dataset was placed (``fetch --from``
links them to an existing copy, ImageNet's ``images/`` may be a link to another disk); below them nothing
may leave: an image must resolve, links included, inside the top-level entry its path starts with.

A violation is a :class:`~promptbias.errors.UserError` naming the file, the entry (``test[0]``) and the
fix given by the caller, raised before anything is written.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from operator import itemgetter
from pathlib import Path
from typing import Any

from promptbias.errors import UserError

SPLITS = ("train", "val", "test")
_SEGMENT = r"(?!\.\.?(?:/|$))[^/\\\x00-\x1f\x7f]+"  # not "." or "..", no separator, backslash or control
_RELATIVE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_UNBOUNDED = 1 << 62
_FIRST = itemgetter(0)


class EntryError(UserError):
    """A refused entry: ``where`` (``test[0]``) and ``problem`` apart, for callers that add context."""

    def __init__(self, file: Path | str, where: str, problem: str, fix: str) -> None:
        super().__init__(f"{file}: {where}: {problem} — {fix}")
        self.where, self.problem = where, problem


def path_problem(rel: object) -> str | None:
    """Why ``rel`` is not a relative, normalised POSIX path inside a folder (None when it is one)."""
    if type(rel) is not str:
        return f"the path {_short(rel)} is not a string"
    if _RELATIVE.fullmatch(rel):
        return None
    if not rel:
        return "the path is empty"
    if rel.startswith("/"):
        return f"the path {rel!r} is absolute"
    if "\\" in rel:
        return f"the path {rel!r} has a backslash (not a POSIX path)"
    if re.search(r"[\x00-\x1f\x7f]", rel):
        return f"the path {rel!r} has a NUL or control character"
    if ".." in rel.split("/"):
        return f"the path {rel!r} leaves the dataset folder ('..')"
    return f"the path {rel!r} is not normalised ('.', '//' or a trailing '/')"


class Paths:
    """The image paths of one file seen so far: each may appear once (across train, val and test)."""

    def __init__(self) -> None:
        self.all: set[str] = set()
        self.lists: list[tuple[str, list[str]]] = []

    def add(self, split: str, paths: list[str]) -> tuple[int, str] | None:
        """Record ``paths`` of ``split``; (index, problem) of the first repeat in it, if any."""
        before = len(self.all)
        self.all.update(paths)  # C-level: a repeat shows as a set smaller than the list
        self.lists.append((split, paths))
        if len(self.all) == before + len(paths):
            return None
        where: dict[str, str] = {}
        for name, listed in self.lists:
            for i, rel in enumerate(listed):
                if rel in where:
                    return (
                        i,
                        f"the image {rel!r} is also {where[rel]} (each image belongs to one entry of one split)",
                    )
                where[rel] = f"{name}[{i}]"
        raise AssertionError("a repeat was counted but not found")


def check_items(
    items: object,
    file: Path | str,
    split: str,
    fix: str,
    *,
    n_classes: int | None = None,
    classnames: list[str] | None = None,
    names: dict[int, str] | None = None,
    seen: Paths | None = None,
) -> dict[int, str]:
    """Check one list of entries; returns ``names`` (label → raw class name), filled in.

    ``classnames``: the normalised names (the name of label y must clean to ``classnames[y]``);
    ``names``/``seen`` carry label → name and the paths across the lists of one file. One
    Python loop checks shapes, types, labels and names; paths and repeats are checked with C-level
    ``map``/``set`` passes, and only a failure walks the entries again for its index."""
    if not isinstance(items, list):
        raise UserError(f"{file}: {split!r} is {_short(items)}, not a list of entries — {fix}")
    bound = n_classes if n_classes is not None else _UNBOUNDED
    names = {} if names is None else names
    known = names.get
    for i, entry in enumerate(items):
        if type(entry) is list and len(entry) == 3:
            rel, label, name = entry
            if type(rel) is str and type(label) is int and 0 <= label < bound and known(label) == name:
                continue  # (a known name is a non-empty str)
        problem = _entry_problem(entry, bound, classnames, names)
        if problem is not None:
            raise EntryError(file, f"{split}[{i}]", problem, fix)
    paths = list(map(_FIRST, items))
    if not all(map(_RELATIVE.fullmatch, paths)):
        i = next(i for i, rel in enumerate(paths) if not _RELATIVE.fullmatch(rel))
        raise EntryError(file, f"{split}[{i}]", str(path_problem(paths[i])), fix)
    repeat = (seen if seen is not None else Paths()).add(split, paths)
    if repeat is not None:
        raise EntryError(file, f"{split}[{repeat[0]}]", repeat[1], fix)
    return names


def _entry_problem(
    entry: object,
    bound: int,
    classnames: list[str] | None,
    names: dict[int, str],
) -> str | None:
    """Why ``entry`` is refused (its path pattern is checked apart); None for a valid entry whose label
    is new (then recorded in ``names``)."""
    from promptbias.data.registry import clean_classname

    if not isinstance(entry, list) or len(entry) != 3:
        return f"{_short(entry)} is not [relative_path, label, classname]"
    rel, label, name = entry
    if type(rel) is not str:
        return path_problem(rel)
    if type(label) is not int:
        return f"the label {_short(label)} is a {type(label).__name__}, not an integer"
    if label < 0:
        return f"the label {label} is negative"
    if label >= bound:
        return f"the label {label} is outside [0, {bound}) ({bound} classes)"
    if type(name) is not str or not name:
        return f"the class name {_short(name)} is not a non-empty string"
    known = names.get(label)
    if known is not None and known != name:
        return f"label {label} is both {known!r} and {name!r} (one class name per label)"
    if classnames is not None and name != classnames[label] and clean_classname(name) != classnames[label]:
        return f"label {label} is named {name!r}, but classnames[{label}] is {classnames[label]!r}"
    names[label] = name
    return None


def check_split(split: object, file: Path | str, fix: str) -> dict[str, Any]:
    """Check a normalised split (``data/raw/<ds>.json``); returns it. Lexical only: no file is touched."""
    if not isinstance(split, dict) or not isinstance(split.get("train"), list):
        raise UserError(f"{file}: not a promptbias split file — {fix}")
    classnames = split.get("classnames")
    if not isinstance(classnames, list) or not all(type(c) is str and c for c in classnames):
        raise UserError(f"{file}: 'classnames' is not a list of class names — {fix}")
    lists = {name: split.get(name) for name in SPLITS if name != "val" or name in split}
    names = _check_lists(lists, file, fix, classnames)
    unused = [y for y in range(len(classnames)) if y not in names]
    if unused:
        raise UserError(
            f"{file}: 'classnames' lists {len(classnames)} classes, but no entry has label {unused[0]} "
            f"({classnames[unused[0]]!r}; {len(unused)} label(s) without images) — {fix}"
        )
    return split


def check_fewshot(few: object, file: Path | str, split: dict[str, Any], fix: str) -> dict[str, Any]:
    """Check a few-shot file's entries against its (checked) normalised ``split``; returns it."""
    if not isinstance(few, dict) or not isinstance(few.get("train"), list):
        raise UserError(f"{file}: not a promptbias split file — {fix}")
    _check_lists({name: few.get(name, []) for name in ("train", "val")}, file, fix, split["classnames"])
    return few


def _check_lists(
    lists: dict[str, object], file: Path | str, fix: str, classnames: list[str]
) -> dict[int, str]:
    """Check the entry lists of one file together (label → name and repeats across them); returns
    label → raw class name."""
    names: dict[int, str] = {}
    seen = Paths()
    for name, items in lists.items():
        check_items(
            items, file, name, fix, n_classes=len(classnames), classnames=classnames, names=names, seen=seen
        )
    return names


def check_files(folder: Path, split: dict[str, Any], file: Path | str, fix: str) -> list[str]:
    """At fetch: every image the split names must resolve inside the dataset (UserError otherwise);
    returns the paths that are missing or not regular files (each once, in split order). One ``lstat``
    per image, one ``realpath`` per folder (and per link)."""
    folder = Path(folder)
    base = os.path.join(folder, "")
    inside: dict[str, bool] = {}  # parent folder → resolves inside its top-level entry
    tops: dict[str, str] = {}
    missing: list[str] = []
    for split_name, i, rel in _unique_paths(split):
        top, _, below = rel.partition("/")
        if top not in tops:
            tops[top] = os.path.realpath(base + top)
        parent = rel.rpartition("/")[0]
        if below and parent not in inside:
            inside[parent] = _within(os.path.realpath(base + parent), tops[top])
        path = base + rel
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            missing.append(rel)
            continue
        escapes = bool(below) and not inside[parent]
        if stat.S_ISLNK(mode):
            escapes = escapes or (bool(below) and not _within(os.path.realpath(path), tops[top]))
            mode = os.stat(path).st_mode if os.path.exists(path) else 0
        if escapes:
            raise _escape(folder, rel, f"{file} {split_name}[{i}]", fix)
        if not stat.S_ISREG(mode):
            missing.append(rel)
    return missing


def image_path(folder: Path | str, rel: str) -> Path:
    """``folder/rel`` to open an image: refused unless ``rel`` is a relative path that resolves, links
    included, inside the top-level entry of ``folder`` it starts with (a few ``lstat`` calls)."""
    folder = Path(folder)
    fix = f"delete {folder.parent / folder.name}.json and rerun `promptbias fetch {folder.name}`"
    problem = path_problem(rel)
    if problem is not None:
        raise UserError(f"{folder}: a split entry is refused: {problem} — {fix}")
    top, _, below = rel.partition("/")
    if below and not _within(os.path.realpath(folder / rel), os.path.realpath(folder / top)):
        raise _escape(folder, rel, "a split entry", f"rerun `promptbias fetch {folder.name}`")
    return folder / rel


def _escape(folder: Path, rel: str, named_by: str, fix: str) -> UserError:
    """The refusal of an image that resolves outside its top-level entry, named where the link lies (a
    top-level link of ``fetch --from`` followed: the copy's own file)."""
    top, _, below = rel.partition("/")
    linked = (folder / top).is_symlink()
    base = os.path.realpath(folder / top) if linked else str(folder / top)
    return UserError(
        f"{Path(base) / below}: resolves to {os.path.realpath(folder / rel)}, outside {base} (a symbolic link "
        f"inside the dataset folder; named by {named_by}) — replace the link by the image file itself (or "
        f"remove it and {fix})"
    )


def _within(real: str, base: str) -> bool:
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _unique_paths(split: dict[str, Any]) -> Iterable[tuple[str, int, str]]:
    """(split, index, path) of each path's first entry."""
    seen: set[str] = set()
    for name in SPLITS:
        for i, entry in enumerate(split.get(name) or []):
            rel = entry[0]
            if rel not in seen:
                seen.add(rel)
                yield name, i, rel


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
