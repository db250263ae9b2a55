"""Where paths taken from metadata may point.

Mixture ids, source paths and impulse-response paths come from files a user did not
write (LibriMix CSVs, WHAM! npz files, shared mixture tables). They decide which files
are read and, for ids, which files are written, so every one of them goes through this
module before it is used:

* a mixture id becomes a file name: it is a plain name (not empty, no path separator,
  no ``..``, no NUL), so ``<folder>/<id>.wav`` stays in ``<folder>``;
* an output path must resolve (symlinks followed) inside the output root;
* a source path is either relative, resolved against the table's base folder, or
  absolute; either way it must resolve (symlinks followed) inside one of the declared
  roots: the base folder, the corpora a ``sepkit prepare`` run recorded in its
  ``prepare_manifest.json``, or roots the caller names.

Used by every ``data_prep`` recipe (through :func:`data_prep.common.execute`) and by the
datasets that render tables on the fly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from sepkit.data.mixtures import MixtureSpec, read_table

MANIFEST = "prepare_manifest.json"


class UnsafePathError(ValueError):
    """A path from metadata points outside where it may point."""


def check_name(name: str, what: str = "mixture id") -> str:
    """``name`` if it is a plain file name component; raises :class:`UnsafePathError` otherwise."""
    if not name or not name.strip():
        raise UnsafePathError(f"{what} is empty")
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise UnsafePathError(f"{what} {name!r} contains a path separator")
    if ".." in name:
        raise UnsafePathError(f"{what} {name!r} contains '..'")
    if "\0" in name:
        raise UnsafePathError(f"{what} {name!r} contains a NUL character")
    return name


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` resolves (symlinks followed) to ``root`` or below it."""
    return _within(Path(path).resolve(), Path(root).resolve())


def _within(resolved: Path, resolved_root: Path) -> bool:
    return resolved == resolved_root or resolved_root in resolved.parents


def output_file(root: Path, directory: Path, name: str, suffix: str = ".wav") -> Path:
    """``directory/<name><suffix>`` after checking ``name`` and that the result resolves inside ``root``."""
    path = Path(directory) / f"{check_name(name)}{suffix}"
    if not is_inside(path, root):
        raise UnsafePathError(f"output {path} resolves to {path.resolve()}, outside the output folder {root}")
    return path


def resolve_source(path: str, base: Path | None, roots: Sequence[Path], what: str = "source path") -> Path:
    """The file ``path`` names (relative paths start at ``base``), if it resolves inside one of ``roots``."""
    return _resolve_inside(path, base, roots, [Path(root).resolve() for root in roots], what)


def _resolve_inside(
    path: str, base: Path | None, roots: Sequence[Path], resolved_roots: Sequence[Path], what: str
) -> Path:
    """:func:`resolve_source` with ``roots`` resolved already (resolving is most of the
    cost of checking a table's paths: it reads every link on the way)."""
    if not path:
        raise UnsafePathError(f"{what} is empty")
    if "\0" in path:
        raise UnsafePathError(f"{what} {path!r} contains a NUL character")
    candidate = Path(path)
    if not candidate.is_absolute():
        if base is None:
            raise UnsafePathError(f"{what} {path!r} is relative but there is no base folder to resolve it")
        candidate = Path(base) / candidate
    resolved = candidate.resolve()
    if not any(_within(resolved, root) for root in resolved_roots):
        shown = ", ".join(str(r) for r in roots) or "(none)"
        raise UnsafePathError(f"{what} {path!r} resolves to {resolved}, outside the allowed roots {shown}")
    return candidate


def check_spec_paths(spec: MixtureSpec, base: Path | None, roots: Sequence[Path]) -> None:
    """Check the id and every file path of one row (sources, noise, impulse responses)."""
    check_name(spec.mixture_id)
    resolved_roots = [Path(root).resolve() for root in roots]
    signals = [(f"s{i + 1}", src) for i, src in enumerate(spec.sources)]
    if spec.noise is not None:
        signals.append(("noise", spec.noise))
    for prefix, src in signals:
        _resolve_inside(src.path, base, roots, resolved_roots, f"{prefix}_path")
        for column, value in ((f"{prefix}_rir", src.rir), (f"{prefix}_anechoic_rir", src.anechoic_rir)):
            if value:
                _resolve_inside(value, base, roots, resolved_roots, column)


def manifest_roots(table: Path) -> list[Path]:
    """The input corpora recorded by the ``sepkit prepare`` run that wrote ``table``.

    Looks for ``prepare_manifest.json`` in the table's folder and above it, and uses it
    only if it lists this table; returns ``[]`` otherwise.
    """
    table = Path(table).resolve()
    for folder in table.parents:
        manifest = folder / MANIFEST
        if not manifest.is_file():
            continue
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return []
        relative = str(table.relative_to(folder))
        listed = any(relative in entry.get("tables", []) for entry in data.get("splits", {}).values())
        return [Path(r) for r in data.get("roots", [])] + [folder] if listed else []
    return []


def read_checked_table(
    table: str | Path, base: str | Path | None = None, roots: Sequence[str | Path] = ()
) -> list[MixtureSpec]:
    """Read a mixture table and refuse any row whose id or paths point outside its roots.

    Args:
        table: mixture-table CSV.
        base: folder relative paths start from (default: the table's folder).
        roots: further folders absolute paths may point into, besides ``base`` and the
            corpora recorded in the ``prepare_manifest.json`` that lists this table.

    Raises:
        UnsafePathError: naming the table, the row (file line) and the problem.
    """
    table = Path(table)
    base_path = Path(base) if base is not None else table.parent
    allowed = [base_path, *map(Path, roots), *manifest_roots(table)]
    specs = read_table(table)
    for line, spec in enumerate(specs, start=2):
        try:
            check_spec_paths(spec, base_path, allowed)
        except UnsafePathError as err:
            raise UnsafePathError(f"{table}: row {line - 1} (line {line}): {err}") from None
    return specs
