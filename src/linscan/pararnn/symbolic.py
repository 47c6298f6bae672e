"""Symbolic code of an AL-RNN trajectory: its linear subregions and their transition graph.

An AL-RNN z' = A z + W relu*(z) + h applies one affine map per sign pattern of its
P ReLU (PWL) units, so the state space splits into (at most) 2^P linear subregions.
Naming the subregion of every state turns a trajectory into a symbolic sequence
(Brenner et al. 2024, "Almost-Linear RNNs Yield Highly Interpretable Symbolic Codes
in Dynamical Systems Reconstruction", NeurIPS 2024, arXiv 2410.14240):

1. ids        subregion id of each state: bit k set <=> PWL unit k is active (z > 0),
              PWL unit k being latent unit M - P + k; ``subregion_label`` spells the
              pattern unit by unit ("10": first PWL unit on, second off)
2. graph      consecutive ids -> transition counts [2^P, 2^P]; ``transition_graph``
              keeps the visited subregions, their occupancy, the self-transitions
              (dwelling) apart from the switches, and both row-normalised
3. plots      the attractor projection coloured by subregion, and the graph drawn with
              matplotlib: a circle per subregion sized by occupancy, an arrow per switch
              with width by its probability (no networkx)

The subregion of z_t decides which affine map produces z_{t+1}, so ids are taken from
the states the map is applied to.
"""

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["subregion_ids", "subregion_label", "region_counts", "symbolic_sequence",
           "transition_counts", "TransitionGraph", "transition_graph", "region_colors",
           "plot_attractor_by_region", "plot_transition_graph"]


# ---------------------------------------------------------------- 1. subregion ids

def subregion_ids(states, relu_units):
    """Subregion ids [...] (int64 in [0, 2^P)) of latent states [..., M] whose last P units
    are the ReLU units: id = sum_k [z_{M-P+k} > 0] 2^k. P = 0 gives all zeros."""
    if relu_units == 0:
        return torch.zeros(states.shape[:-1], dtype=torch.long, device=states.device)
    active = (states[..., states.shape[-1] - relu_units:] > 0).long()     # (..., P)
    weights = 2 ** torch.arange(relu_units, device=states.device)
    return (active * weights).sum(-1)


def subregion_label(region, relu_units):
    """Sign pattern of subregion ``region`` unit by unit: "10" = first PWL unit active,
    second inactive; "-" when there are no PWL units."""
    return "".join(str((int(region) >> k) & 1) for k in range(relu_units)) or "-"


def region_counts(ids, relu_units):
    """Time steps spent in each of the 2^P subregions: int64 [2^P]; the number of visited
    subregions is ``(region_counts(ids, P) > 0).sum()``."""
    return torch.bincount(torch.as_tensor(ids).reshape(-1), minlength=2 ** relu_units)


def symbolic_sequence(ids):
    """Run-length form of an id sequence [T]: (symbols [S], dwell times [S]) with
    consecutive symbols distinct, e.g. 0 0 1 1 1 0 -> (0 1 0), (2 3 1)."""
    ids = torch.as_tensor(ids).reshape(-1)
    symbols, dwell = torch.unique_consecutive(ids, return_counts=True)
    return symbols, dwell


# ---------------------------------------------------------------- 2. transition graph

def transition_counts(ids, relu_units):
    """Counts [2^P, 2^P] of consecutive pairs (ids_t, ids_{t+1}); the diagonal holds the
    self-transitions (steps that stay in their subregion)."""
    ids = torch.as_tensor(ids).reshape(-1)
    n = 2 ** relu_units
    pairs = ids[:-1] * n + ids[1:]
    return torch.bincount(pairs, minlength=n * n).reshape(n, n)


def _row_normalise(counts):
    totals = counts.sum(1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


@dataclass
class TransitionGraph:
    """Empirical transition graph of a symbolic sequence over its visited subregions.

    regions       visited subregion ids, ascending (R of them)
    labels        their sign patterns (``subregion_label``)
    occupancy     fraction of time steps in each region [R]
    counts        transition counts [R, R] between visited regions, diagonal included
    self_prob     P(stay | region) [R], the diagonal of the row-normalised counts
    switch_prob   P(next region = j | leave region i) [R, R], zero diagonal; rows of
                  regions never left are zero
    """

    relu_units: int
    regions: list
    labels: list
    occupancy: np.ndarray
    counts: np.ndarray
    self_prob: np.ndarray
    switch_prob: np.ndarray

    def to_dict(self):
        return {"relu_units": self.relu_units, "regions": self.regions, "labels": self.labels,
                "occupancy": self.occupancy.tolist(), "counts": self.counts.tolist(),
                "self_prob": self.self_prob.tolist(), "switch_prob": self.switch_prob.tolist()}


def transition_graph(ids, relu_units):
    """The ``TransitionGraph`` of the id sequence ``ids`` [T] of a model with P ReLU units."""
    ids = torch.as_tensor(ids).reshape(-1)
    occupied = region_counts(ids, relu_units)
    regions = torch.nonzero(occupied).reshape(-1)
    counts = transition_counts(ids, relu_units)[regions][:, regions].numpy()     # (R, R)
    switches = counts * (1 - np.eye(len(regions), dtype=counts.dtype))
    return TransitionGraph(
        relu_units=relu_units, regions=regions.tolist(),
        labels=[subregion_label(r, relu_units) for r in regions.tolist()],
        occupancy=(occupied[regions].double() / ids.numel()).numpy(),
        counts=counts, self_prob=np.diag(_row_normalise(counts)).copy(),
        switch_prob=_row_normalise(switches))


# ---------------------------------------------------------------- 3. plots

def region_colors(relu_units):
    """One RGBA colour per subregion id [2^P, 4], shared by both plots so that a node of the
    graph and its part of the attractor match (tab10 up to 10 regions, tab20 up to 20,
    then a cyclic map)."""
    import matplotlib

    n = 2 ** relu_units
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "hsv"]
    return cmap(np.arange(n) % cmap.N if n <= 20 else np.arange(n) / n)


def _figure(ax, figsize):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    return plt.subplots(figsize=figsize)


def _save(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attractor_by_region(x, ids, relu_units, *, dims=(0, 2), ax=None, path=None, title=None,
                             axis_names="xyz"):
    """Scatter the projection ``dims`` of a trajectory x [T, D] coloured by subregion ids [T].
    Draws into ``ax`` (a new figure when None); writes ``path`` (and closes) when given."""
    fig, ax = _figure(ax, (5, 4.5))
    x, ids = np.asarray(x), np.asarray(ids)
    colors = region_colors(relu_units)
    for region in np.unique(ids):
        pts = x[ids == region]
        ax.scatter(pts[:, dims[0]], pts[:, dims[1]], s=0.6, color=colors[region],
                   label=f"{subregion_label(region, relu_units)} ({len(pts) / len(x):.0%})",
                   rasterized=True)
    ax.set_xlabel(axis_names[dims[0]])
    ax.set_ylabel(axis_names[dims[1]])
    if title:
        ax.set_title(title)
    if len(np.unique(ids)) <= 16:            # beyond that a legend hides the attractor
        ax.legend(fontsize=7, markerscale=8, loc="upper right", title="subregion",
                  title_fontsize=7)
    if path is not None:
        _save(fig, path)
    return ax


def _node_positions(n):
    """Nodes on a circle (one node: the centre)."""
    if n == 1:
        return np.zeros((1, 2))
    angle = np.pi / 2 - 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angle), np.sin(angle)], -1)


def plot_transition_graph(graph, *, ax=None, path=None, title=None, min_prob=0.01):
    """Draw a ``TransitionGraph``: one circle per visited subregion, area proportional to its
    occupancy, labelled with its sign pattern and P(stay); one curved arrow per switch
    i -> j with P(j | leave i) >= ``min_prob``, width proportional to that probability."""
    from matplotlib.patches import Circle, FancyArrowPatch

    fig, ax = _figure(ax, (4.5, 4.5))
    pos = _node_positions(len(graph.regions))
    radius = 0.08 + 0.22 * np.sqrt(graph.occupancy / graph.occupancy.max())
    colors = region_colors(graph.relu_units)
    for i, j in zip(*np.nonzero(graph.switch_prob >= min_prob)):
        unit = (pos[j] - pos[i]) / np.linalg.norm(pos[j] - pos[i])
        ax.add_patch(FancyArrowPatch(     # rim to rim, bent so that i -> j and j -> i part
            pos[i] + radius[i] * unit, pos[j] - radius[j] * unit, shrinkA=0, shrinkB=0,
            connectionstyle="arc3,rad=0.2", arrowstyle="-|>", mutation_scale=12,
            lw=0.5 + 6 * graph.switch_prob[i, j], color="0.35", zorder=1))
    for k, region in enumerate(graph.regions):
        ax.add_patch(Circle(pos[k], radius[k], color=colors[region], alpha=0.85, zorder=2))
        ax.text(*pos[k], f"{graph.labels[k]}\nstay {graph.self_prob[k]:.2f}",
                ha="center", va="center", fontsize=7, zorder=3)
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.5, 1.5)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title)
    if path is not None:
        _save(fig, path)
    return ax
