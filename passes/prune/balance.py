"""Group-uniform channel classes for grouped convolutions.

A conv with `g` groups stays a conv with `g` groups only if every group loses as many
input channels (and as many output channels) as the others. The connected components of
the coupling graph are the units that *must* go together (one label per unit: the smallest
unit of its class); this module then merges whole classes into classes that are
*balanced* on every grouped conv: each class holds equally many units in each of the conv's
`g` blocks. A balanced class can be removed on its own, so any set of classes can.

Merging is a choice, not a forced coupling: unbalanced classes of one conv are binned
greedily (a bin takes the class that best fills its short blocks without overshooting,
and closes as soon as its per-block counts are equal; the last bin takes the rest, which
is balanced because the whole tensor is). Merging can unbalance another
conv's view, so the constraints are revisited until none changes. `check_balanced` is the
proof the analysis records.
"""

from __future__ import annotations

import numpy as np


def block_counts(roots: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes of a tensor's units in first-seen order, and their unit counts per conv group [classes, groups]."""
    units = len(roots)
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    cls = rank[inverse]
    counts = np.zeros((len(order), groups), dtype=np.int64)
    np.add.at(counts, (cls, np.arange(units) // (units // groups)), 1)
    return roots[first[order]], counts


def balanced_bins(vectors: np.ndarray) -> list[list[int]]:
    """Partition rows of `vectors` (per-block counts; their sum is balanced) into balanced bins, greedily."""
    remaining = list(range(len(vectors)))
    bins = []
    while remaining:
        current = [remaining.pop(0)]
        total = vectors[current[0]].copy()
        while total.max() != total.min() and remaining:
            rest = vectors[remaining]
            deficit = total.max() - total
            fits = np.all(rest <= deficit, axis=1)
            if fits.any():  # fill the short blocks without raising the tallest one
                gap = np.where(fits, np.abs(deficit - rest).sum(axis=1), np.iinfo(np.int64).max)
                best = int(np.argmin(gap))
            else:
                candidates = rest + total
                best = int(np.argmin(candidates.max(axis=1) - candidates.min(axis=1)))
            current.append(remaining.pop(best))
            total = total + rest[best]
        bins.append(current)
    return bins


def balance(labels: np.ndarray, constraints: list[tuple[int, int, int]]) -> int:
    """Merge classes (relabelling `labels` in place) until each is balanced on every (base, units, groups)
    constraint; a merged class takes the smaller label. Returns the number of merges made.
    """
    merges = 0
    changed = True
    current, of_unit = np.unique(labels, return_inverse=True)  # a merge relabels classes, not units
    while changed:
        changed = False
        for base, units, groups in constraints:
            reps, counts = block_counts(current[of_unit[base:base + units]], groups)
            uneven = np.nonzero(counts.max(axis=1) != counts.min(axis=1))[0]
            for members in balanced_bins(counts[uneven]):
                label = int(reps[uneven[members[0]]])
                for other in members[1:]:
                    low, high = sorted((label, int(reps[uneven[other]])))
                    current[current == high] = low
                    label = low
                    merges += 1
                    changed = True
    labels[:] = current[of_unit]
    return merges


def check_balanced(element_component: np.ndarray, groups: int) -> bool:
    """True when every component has equally many units in each of the `groups` blocks of a tensor."""
    _, counts = block_counts(np.asarray(element_component), groups)
    return bool(np.all(counts.max(axis=1) == counts.min(axis=1)))
