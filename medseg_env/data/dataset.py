"""An in-memory, read-only collection of :class:`Sample` s, plus helpers shared by the loaders.

Every loader returns a :class:`Dataset`. A dataset is never empty and its ``sample_id`` s are
unique, so ``sample_id`` can key results, caches and train / test splits.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np

from medseg_env.data.sample import Sample, read_only


class Dataset(Sequence[Sample]):
    """An ordered, immutable list of samples with a name.

    Args:
        samples: the samples, in the order episodes will see them.
        name: shown in messages and reports (a file name, ``"demo"``, ...).
        heldout: the data is reserved for the final evaluation (``demo-heldout``, or a
            manifest with ``"heldout": true``): every trainer and exporter refuses it
            (:func:`refuse_heldout`). Slices, filters and concatenations keep the flag.

    Raises:
        ValueError: no samples (the message names the dataset), a duplicated ``sample_id``, or
            an element that is not a :class:`Sample`.
    """

    def __init__(self, samples: Iterable[Sample], name: str, *, heldout: bool = False) -> None:
        self._name = str(name)
        if not isinstance(heldout, bool):
            raise ValueError(
                f"dataset {self._name!r}: heldout must be True or False; got {heldout!r}"
            )
        self._heldout = heldout
        self._samples: tuple[Sample, ...] = tuple(samples)
        if not self._samples:
            raise ValueError(f"dataset {self._name!r} has no samples")
        for s in self._samples:
            if not isinstance(s, Sample):
                raise ValueError(f"dataset {self._name!r}: expected Sample, got {type(s).__name__}")
        counts = Counter(s.sample_id for s in self._samples)
        duplicated = sorted(k for k, n in counts.items() if n > 1)
        if duplicated:
            shown = ", ".join(repr(d) for d in duplicated[:5])
            more = f" (and {len(duplicated) - 5} more)" if len(duplicated) > 5 else ""
            raise ValueError(f"dataset {self._name!r}: duplicated sample_id {shown}{more}")
        self._index = {s.sample_id: i for i, s in enumerate(self._samples)}

    @property
    def name(self) -> str:
        return self._name

    @property
    def heldout(self) -> bool:
        """Reserved for the final evaluation: never trained, tuned or exported from."""
        return self._heldout

    @property
    def samples(self) -> tuple[Sample, ...]:
        return self._samples

    @property
    def modalities(self) -> tuple[str, ...]:
        """Distinct modalities, sorted."""
        return tuple(sorted({s.modality for s in self._samples}))

    @property
    def source_ids(self) -> tuple[str, ...]:
        """Distinct source ids, in first-seen order."""
        return tuple(dict.fromkeys(s.source_id for s in self._samples))

    @property
    def targets(self) -> tuple[str, ...]:
        """Distinct target names, sorted."""
        return tuple(sorted({s.target for s in self._samples}))

    def __len__(self) -> int:
        return len(self._samples)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> Dataset: ...

    def __getitem__(self, index: int | slice) -> Sample | Dataset:
        if isinstance(index, slice):
            return Dataset(self._samples[index], name=self._name, heldout=self._heldout)
        return self._samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._samples)

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, Sample) or item.sample_id not in self._index:
            return False
        return self._samples[self._index[item.sample_id]] is item

    def __repr__(self) -> str:
        held = ", heldout=True" if self._heldout else ""
        return (
            f"Dataset(name={self._name!r}, samples={len(self)}, "
            f"modalities={list(self.modalities)}, sources={len(self.source_ids)}{held})"
        )

    def index_of(self, sample_id: str) -> int:
        """Position of the sample with this id. Raises ``KeyError`` if absent."""
        try:
            return self._index[sample_id]
        except KeyError:
            raise KeyError(f"dataset {self._name!r} has no sample {sample_id!r}") from None

    def get(self, sample_id: str) -> Sample:
        """The sample with this id. Raises ``KeyError`` if absent."""
        return self._samples[self.index_of(sample_id)]

    def filter(
        self,
        predicate: Callable[[Sample], bool] | None = None,
        *,
        modality: str | Iterable[str] | None = None,
        source_id: str | Iterable[str] | None = None,
        target: str | Iterable[str] | None = None,
        name: str | None = None,
    ) -> Dataset:
        """Samples matching every given criterion (a string or a collection of accepted values).

        Raises:
            ValueError: nothing matches (an empty dataset is never returned).
        """

        def accepted(values: str | Iterable[str] | None) -> frozenset[str] | None:
            if values is None:
                return None
            return frozenset([values] if isinstance(values, str) else values)

        mods, srcs, tgts = accepted(modality), accepted(source_id), accepted(target)
        kept = [
            s
            for s in self._samples
            if (mods is None or s.modality in mods)
            and (srcs is None or s.source_id in srcs)
            and (tgts is None or s.target in tgts)
            and (predicate is None or predicate(s))
        ]
        if not kept:
            raise ValueError(
                f"filter on dataset {self._name!r} matched no sample "
                f"(modality={modality!r}, source_id={source_id!r}, target={target!r}, "
                f"predicate={'yes' if predicate else 'no'}); "
                f"available modalities: {list(self.modalities)}"
            )
        return Dataset(kept, name=name or self._name, heldout=self._heldout)

    def concat(self, *others: Dataset, name: str | None = None) -> Dataset:
        """This dataset followed by ``others`` (``sample_id`` s must stay unique); held out when
        any part is."""
        samples = list(self._samples)
        for other in others:
            samples.extend(other.samples)
        return Dataset(
            samples,
            name=name or "+".join([self._name, *(o.name for o in others)]),
            heldout=self._heldout or any(o.heldout for o in others),
        )

    def __add__(self, other: object) -> Dataset:
        if not isinstance(other, Dataset):
            return NotImplemented
        return self.concat(other)


def refuse_heldout(dataset: Dataset, what: str) -> None:
    """Raise a ``ValueError`` when ``dataset`` is held out: the one guard of every trainer and
    exporter.

    Args:
        what: the option that named the dataset, for the message
            (``"medseg-train ppo --dataset"``).
    """
    if dataset.heldout:
        raise ValueError(
            f"{what}: dataset {dataset.name!r} is held out for the final evaluation and is never "
            "trained, tuned or exported from; use a training set such as 'demo' (its validation "
            "split serves for tuning)"
        )


def data_fingerprint(dataset: Dataset, indices: Iterable[int]) -> dict[str, Any]:
    """Name, sizes and a SHA-256 of the selected samples' ids, pixels, masks and spacing.

    What a results or export folder records of its data, so that a resume on changed data is
    refused.
    """
    digest = hashlib.sha256()
    indices = list(indices)
    for i in indices:
        s = dataset[i]
        digest.update(f"{s.sample_id}|{s.modality}|{s.target}|{s.spacing}|".encode())
        digest.update(np.ascontiguousarray(s.image).tobytes())
        digest.update(np.packbits(s.mask).tobytes())
    return {
        "name": dataset.name,
        "samples": len(dataset),
        "selected": len(indices),
        "sha256": digest.hexdigest(),
    }


# --- helpers shared by the loaders -------------------------------------------------------------


def target_name(value: int, label_map: Mapping[int, str] | None) -> str:
    """Name of label ``value``: from ``label_map`` if given there, else ``"label_<value>"``."""
    if label_map and value in label_map:
        return str(label_map[value])
    return f"label_{value}"


# Keys are ints, or digit strings from JSON (a union: ``Mapping`` is invariant in its key type).
LabelMapInput = Mapping[int, str] | Mapping[str, str] | Mapping[int | str, str]


def parse_label_map(label_map: LabelMapInput | None, where: str) -> dict[int, str]:
    """Validate a ``{label value: name}`` mapping; keys may be ints or digit strings (JSON)."""
    if label_map is None:
        return {}
    if not isinstance(label_map, Mapping):
        raise ValueError(f"{where}: label_map must be a mapping value -> name; got {label_map!r}")
    out: dict[int, str] = {}
    for key, value in label_map.items():
        try:
            ivalue = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: label_map key {key!r} is not an integer") from None
        if ivalue <= 0 or not str(value).strip():
            raise ValueError(f"{where}: label_map entry {key!r}: {value!r} is invalid")
        out[ivalue] = str(value)
    return out


def as_label_array(labels: np.ndarray, where: str) -> np.ndarray:
    """Check that a label map holds non-negative integers and return it as ``int64``.

    Float label maps (common in NIfTI) are accepted when every value is a whole number.
    """
    arr = np.asarray(labels)
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{where}: label map has non-integer values (is it an image?)")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{where}: label map has unsupported dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{where}: label map has negative values")
    return arr


def label_areas(labels: np.ndarray) -> dict[int, int]:
    """``{value: pixel count}`` for every nonzero value of a 2D label map."""
    values, counts = np.unique(labels[labels != 0], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def select_spread(candidates: Sequence[int], areas: Sequence[int], limit: int | None) -> list[int]:
    """Pick at most ``limit`` of ``candidates`` (slice indices, sorted), spread evenly.

    The candidates are cut into ``limit`` consecutive groups and the largest-area one of each
    group is kept: the choice covers the whole extent of a structure while preferring the slices
    where it is big, instead of its thin ends.
    """
    if limit is None or len(candidates) <= limit:
        return list(candidates)
    if limit <= 0:
        raise ValueError(f"limit must be positive; got {limit}")
    chosen = []
    for group in np.array_split(np.arange(len(candidates)), limit):
        best = max(group, key=lambda i: (areas[i], -i))
        chosen.append(candidates[best])
    return chosen


def unique_target_ids(values: Sequence[int], label_map: Mapping[int, str] | None) -> dict[int, str]:
    """``{value: id part}``: the target name, suffixed with ``_<value>`` when several values of
    one image share a name (instance maps such as nuclei, all named ``"nucleus"``)."""
    names = {v: target_name(v, label_map) for v in values}
    counts = Counter(names.values())
    return {v: (n if counts[n] == 1 else f"{n}_{v}") for v, n in names.items()}


def samples_from_slices(
    image_of: Callable[[int], np.ndarray],
    labels: np.ndarray,
    *,
    slice_ids: Sequence[str],
    source_id: str,
    modality: str,
    spacing: tuple[float, float],
    label_map: Mapping[int, str] | None,
    min_area: int,
    max_slices_per_target: int | None = None,
    id_prefix: str | None = None,
) -> list[Sample]:
    """Build one :class:`Sample` per (slice, nonzero label value) pair.

    Args:
        image_of: slice position -> its ``(H, W, 3)`` ``uint8`` RGB image; called once per
            slice that keeps a target, and the targets of a slice share the array (made
            read-only, see :func:`~medseg_env.data.sample.read_only`).
        labels: ``(N, H, W)`` integer label maps, one per slice.
        slice_ids: per slice, the id part (``"z012"``, or ``""`` for a plain 2D image).
        id_prefix: first part of every ``sample_id`` (defaults to ``source_id``).
        min_area: targets with fewer pixels in a slice are skipped there.
        max_slices_per_target: keep at most this many slices per label value
            (see :func:`select_spread`).

    Sample ids are ``"<prefix>/<slice id>/<target>"`` (``"<prefix>/<target>"`` for 2D).
    """
    prefix = id_prefix or source_id
    per_value: dict[int, list[tuple[int, int]]] = {}
    for k in range(labels.shape[0]):
        for value, area in label_areas(labels[k]).items():
            if area >= min_area:
                per_value.setdefault(value, []).append((k, area))

    keep: set[tuple[int, int]] = set()
    for value, hits in per_value.items():
        ks = [k for k, _ in hits]
        for k in select_spread(ks, [a for _, a in hits], max_slices_per_target):
            keep.add((k, value))

    samples: list[Sample] = []
    for k in range(labels.shape[0]):
        values = sorted(v for kk, v in keep if kk == k)
        if not values:
            continue
        # Disambiguate duplicated names among all values of the slice, so ids do not depend on
        # min_area or on which slices were kept.
        ids = unique_target_ids(sorted(label_areas(labels[k])), label_map)
        image = read_only(image_of(k))  # frozen once: the targets of the slice share it
        for value in values:
            parts = [prefix, slice_ids[k], ids[value]]
            samples.append(
                Sample(
                    image=image,
                    mask=labels[k] == value,
                    target=target_name(value, label_map),
                    modality=modality,
                    source_id=source_id,
                    sample_id="/".join(p for p in parts if p),
                    spacing=spacing,
                )
            )
    return samples
