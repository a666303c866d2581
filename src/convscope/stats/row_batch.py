"""One recorded row's histograms, near-zero counts and dead channels, counted for all layers at once.

The per-layer path (compute.layer_stats) makes about 20 small tensor ops per layer and step. On a CPU
each op has a fixed cost whatever its size, so for 14 layers the row costs more in op overhead than in
arithmetic (the timings: docs/measurements.md#stats-row-batch). Here each layer's hook keeps only
what must be taken while its output is still intact (a later in-place op, e.g. `ReLU(inplace=True)`, may
overwrite it), and the rest is done once per row for all layers:

RowBatch (one process on the CPU): the hook writes the layer's sum and sum of squares into the buffer row
    and keeps its bin indices and per-channel maxima. When every layer has been seen, one bincount over
    all layers' indices (each layer's bins shifted past the previous layer's) gives every histogram and
    near-zero count, and one pass over the concatenated maxima the dead channels. That is ~11 ops per layer
    plus ~8 per row. Most of what remains is element work (~10 passes over the ~600k values of a row
    sampled from 64 items), which batching cannot remove (before and after: docs/measurements.md#stats-row-batch).
DeviceRowBatch (one process on a GPU): there the element work is nearly free and each op is a kernel
    launch that the CPU must issue, so the hook only copies the layer's values (one launch), and the row's
    end concatenates all layers and computes every sum, histogram and count with ~25 launches in all, none
    of which reads anything back to the host: segmented sums, and two histc calls (no bincount, whose
    output size needs a host read on CUDA), one for the values' bins and one counting each channel's
    positive values (a channel with none is dead). The launches per recorded row that this saves, as
    benchmarks/gpu_breakdown.py counted them: docs/measurements.md#stats-row-batch.

Used for the common case only: one process, histograms on, fixed ranges whose fine bins are all as many
and have edges at 0 and 0.05 (the default ranges with 40 bins: 200 fine bins each, of 0.05 for [0, 10]
after a ReLU and [-5, 5] elsewhere, of 0.005 for a sigmoid's [0, 1] and 0.01 for a tanh's [-1, 1]; a shift
per layer, and a scale per layer where the ranges differ in width). Other settings keep the per-layer path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import accumulate

import torch

from convscope.stats.compute import (
    ABS_NEAR_ZERO_COUNT,
    DEAD_COUNT,
    NEAR_ZERO_COUNT,
    NEGATIVE_COUNT,
    SUM,
    SUM_SQ,
    BinLayout,
    bin_positions,
    channel_maxima,
    channels_innermost,
    float_values,
    write_sums,
)


class RowBatch:
    # Outputs larger than this are counted on their own (the collector's per-layer path): their element
    # work dwarfs the op overhead that batching saves, and on the CPU batching costs them an extra pass
    # (measured with sample=None: docs/measurements.md#stats-row-batch).
    max_elements: int | None = 1 << 18

    def __init__(self, bins: int, ranges: list[tuple[float, float]], layouts: list[BinLayout]) -> None:
        """One (lo, hi) and `compute.bin_layout` per layer; all layouts with the same `fine` and an edge at 0."""
        assert len({layout.fine for layout in layouts}) == 1 and all(lt.zero is not None for lt in layouts)
        self.n_layers, self.bins, self.fine, self.ranges = len(ranges), bins, layouts[0].fine, ranges
        self.width = bins * self.fine + 2  # a layer's fine bins, with under- and overflow
        # Where each layer's counts are read: values below 0.05, below 0, below -0.05 (see compute.BinLayout);
        # and which layers have the edge at -0.05 (the others' abs_near_zero is settled on the host).
        self._edges_host = [layout.edges for layout in layouts]
        self._abs_known_host = [layout.negative_near is not None for layout in layouts]
        self._closed_host = [layout.closed for layout in layouts]  # overflow = values at hi: the last bin's
        self._edges: dict[str, torch.Tensor] = {}
        self.index_dtype = torch.int16 if self.n_layers * self.width <= torch.iinfo(torch.int16).max else torch.int32
        self.parts: dict[int, torch.Tensor] = {}  # what each layer's hook left for the row's end
        self.maxima: dict[int, torch.Tensor] = {}
        self._channel_owner: dict[tuple[int, ...], torch.Tensor] = {}
        self._rows: dict[tuple[int, ...], torch.Tensor] = {}
        # The last row's layout: each layer's slice of one index buffer, so that the next row's hooks write
        # their indices where bincount reads them (no cast to a temporary, no concatenation).
        self._layout: dict[int, tuple[int, int]] = {}  # layer -> (start, length)
        self._row: torch.Tensor | None = None
        self._row_offsets: torch.Tensor | None = None  # per value of self._row: its layer's first bin
        self._slices: dict[int, torch.Tensor] = {}  # each layer's part of self._row (views made once)
        self._in_row: set[int] = set()  # layers whose current indices are in self._row

    @property
    def pending(self) -> bool:
        return bool(self.parts)

    def takes(self, x: torch.Tensor) -> bool:
        """Whether output `x` joins the row (else the collector counts it on its own)."""
        return self.max_elements is None or x.numel() <= self.max_elements

    def add(self, i: int, x: torch.Tensor, values: tuple[torch.Tensor, ...]) -> tuple[int, int]:
        """Take layer i's output `x`: its sums go into `values` now, the rest waits for `finish`.

        Returns (elements, channels), as compute.layer_stats does. A layer seen twice in one step (a
        module called twice) keeps its last call, as in the per-layer path."""
        x, flat = write_sums(x, values)
        lo, hi = self.ranges[i]
        positions = bin_positions(flat, self.width - 2, lo, hi)
        idx = self._slices.get(i)
        if idx is not None and idx.numel() == flat.numel():  # the cast writes into the row's buffer (its bins
            idx.copy_(positions)  # moved at the row's end)
            self._in_row.add(i)
        else:
            idx = positions.to(self.index_dtype).add_(i * self.width)  # layer i's bins come after layer i-1's
            self._in_row.discard(i)
        self.parts[i] = idx
        self.maxima[i] = channel_maxima(x)
        return x.numel(), self.maxima[i].numel()

    def forget(self, i: int) -> None:
        """Drop what layer i left waiting (its later call in this step was counted on its own)."""
        self.parts.pop(i, None)
        self.maxima.pop(i, None)
        self._in_row.discard(i)

    def complete(self) -> bool:
        return len(self.parts) == self.n_layers

    def _count(self, layers: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """For the waiting layers: fine-bin counts [len(layers), width], dead channels [len(layers)], and
        sums [2, len(layers)] where the hooks did not write them (None here)."""
        if self._in_row == set(layers) == set(self._layout):  # all wrote into the buffer: one op moves the
            indices = self._row.add_(self._row_offsets)  # bins of each layer past the previous layer's
        else:
            for i in self._in_row:  # written into the buffer, their bins not moved yet
                self.parts[i].add_(i * self.width)
            indices = torch.cat([self.parts[i] for i in layers])
            # Lay the buffer out for the next rows (rows of one run have the same layers and sizes).
            starts = list(accumulate((self.parts[i].numel() for i in layers), initial=0))
            self._layout = {i: (starts[j], self.parts[i].numel()) for j, i in enumerate(layers)}
            self._row = torch.empty(starts[-1], dtype=self.index_dtype, device=indices.device)
            self._slices = {i: self._row[start : start + n] for i, (start, n) in self._layout.items()}
            self._row_offsets = torch.repeat_interleave(
                torch.tensor([i * self.width for i in layers], dtype=self.index_dtype, device=indices.device),
                torch.tensor([self.parts[i].numel() for i in layers], device=indices.device))
        self._in_row = set()
        counts = torch.bincount(indices, minlength=self.n_layers * self.width).view(self.n_layers, self.width)
        if len(layers) < self.n_layers:  # some module did not run this step
            counts = counts.index_select(0, self._row_index(layers, counts.device))
        maxima = [self.maxima[i] for i in layers]
        dead = torch.zeros(len(layers), device=counts.device).index_add_(
            0, self._owner(tuple(m.numel() for m in maxima), counts.device), torch.cat(maxima).le(0).float())
        return counts, dead, None

    def finish(self, values: torch.Tensor, hist: torch.Tensor) -> None:
        """Write the waiting layers' histograms (`hist` [layers, bins] int64), near-zero and dead counts
        (and sums, where the hooks left them) into this row's `values` [layers, 4], and forget them."""
        layers = sorted(self.parts)
        counts, dead, sums = self._count(layers)
        coarse = counts[:, 1:-1].reshape(len(layers), self.bins, self.fine).sum(dim=2)
        edges, abs_known, closed = self._edge_index(counts.device)
        if len(layers) < self.n_layers:
            rows = self._row_index(layers, counts.device)
            edges, abs_known, closed = (t.index_select(0, rows) for t in (edges, abs_known, closed))
        if any(self._closed_host):
            coarse[:, -1] += counts[:, -1] * closed
        # Values below 0.05, below 0 and below -0.05, per layer: one cumulative sum, read at each layer's edges.
        below = counts.cumsum(dim=1).gather(1, edges).float()
        near, negative = below[:, 0], below[:, 1]
        abs_near = torch.where(abs_known, near - below[:, 2], float("nan"))
        new = {NEAR_ZERO_COUNT: near, DEAD_COUNT: dead.float(), NEGATIVE_COUNT: negative,
               ABS_NEAR_ZERO_COUNT: abs_near}
        if sums is not None:
            new[SUM], new[SUM_SQ] = sums[0], sums[1]
        if len(layers) == self.n_layers:
            hist.copy_(coarse)
            if len(new) == values.shape[1]:  # every column at once: one stack and one copy
                values.copy_(torch.stack([new[c] for c in range(len(new))], dim=1))
            else:
                for c, column in new.items():
                    values[:, c].copy_(column)
        else:  # leave the rows of modules that did not run this step alone
            rows = self._row_index(layers, values.device)
            hist.index_copy_(0, rows, coarse.to(hist.dtype))
            for c, column in new.items():
                values[:, c].index_copy_(0, rows, column)
        self.parts, self.maxima = {}, {}

    def _edge_index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if "edges" not in self._edges:  # made once: a host-to-device copy syncs on a GPU
            self._edges["edges"] = torch.tensor(self._edges_host, dtype=torch.long, device=device)
            self._edges["abs_known"] = torch.tensor(self._abs_known_host, device=device)
            self._edges["closed"] = torch.tensor(self._closed_host, dtype=torch.long, device=device)
        return self._edges["edges"], self._edges["abs_known"], self._edges["closed"]

    def _row_index(self, layers: list[int], device: torch.device) -> torch.Tensor:
        key = tuple(layers)
        if key not in self._rows:  # made once per set of layers: a host-to-device copy syncs on a GPU
            self._rows[key] = torch.tensor(layers, device=device)
        return self._rows[key]

    def _owner(self, channels: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """For each channel of the concatenated maxima, the position of its layer (made once per shape)."""
        if channels not in self._channel_owner:
            self._channel_owner[channels] = torch.repeat_interleave(
                torch.arange(len(channels), device=device), torch.tensor(channels, device=device))
        return self._channel_owner[channels]


class DeviceRowBatch(RowBatch):
    """The same row for a GPU: few kernel launches, no host read (see the module's docstring)."""

    max_elements = None  # copying a large output costs a GPU little; every layer joins the row

    def __init__(self, bins: int, ranges: list[tuple[float, float]], layouts: list[BinLayout]) -> None:
        super().__init__(bins, ranges, layouts)
        # Per layer: (elements, channels, elements per channel block): in memory order the channel of
        # value j is (j // block) % channels (block 1 when channels are innermost).
        self.shapes: dict[int, tuple[int, int, int]] = {}
        self._plans: dict[tuple, _RowPlan] = {}

    def add(self, i: int, x: torch.Tensor, values: tuple[torch.Tensor, ...]) -> tuple[int, int]:
        x, flat = float_values(x)
        # A copy: the values must outlive an in-place op that may follow (ReLU(inplace=True)).
        self.parts[i] = flat.clone()
        channels = x.shape[1] if x.ndim >= 2 else 1
        # In `flat`'s order, channels are innermost for channels_last, else blocks of each item's grid.
        block = 1 if channels_innermost(x) else math.prod(x.shape[2:])
        self.shapes[i] = (x.numel(), channels, block)
        return x.numel(), channels

    def forget(self, i: int) -> None:
        super().forget(i)
        self.shapes.pop(i, None)

    def _count(self, layers: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        flat = torch.cat([self.parts[i] for i in layers])
        plan = self._plan(layers, flat.device)
        # Sums in float64: how a segmented sum adds up its values differs by device (one at a time on a
        # CPU), and float64 keeps it exact enough for the variance (sum of squares - n mean^2) either way.
        wide = flat.double()
        sums = torch.stack([torch.segment_reduce(wide, "sum", offsets=plan.offsets, unsafe=True),
                            torch.segment_reduce(wide.square_(), "sum", offsets=plan.offsets, unsafe=True)]).float()
        # Dead channels: count each channel's positive values in one histogram (a position past the last
        # bin is not counted), then the channels without any, per layer.
        c = plan.n_channels
        positive = torch.histc(torch.where(flat > 0, plan.channel_pos, -1.0), c, 0, c)
        dead = torch.segment_reduce(positive.eq(0).float(), "sum", offsets=plan.channel_offsets, unsafe=True)
        # Value bins: compute.bin_positions' arithmetic (each layer's own shift, and one scale for all layers
        # where their ranges are as wide), in place on the row's own copy, each layer's bins moved past the
        # previous layer's; bin_start's +0.5 puts every value in the middle of its unit-wide bin, so histc's
        # rounding cannot move it.
        n = self.width - 2
        if plan.scale is None:
            lo, hi = self.ranges[layers[0]]
            idx = torch.add(plan.shift, flat, alpha=n / (hi - lo), out=flat)
        else:  # shift + x * scale without a fused multiply-add: a value within float32 rounding of a bin edge
            idx = torch.addcmul(plan.shift, flat, plan.scale, out=flat)  # may land beside bin_positions' bin
        idx.clamp_(0, n + 1)
        idx.floor_().add_(plan.bin_start)
        total = len(layers) * self.width
        counts = torch.histc(idx, total, 0, total).view(len(layers), self.width)
        self.shapes = {}
        return counts, dead, sums

    def _plan(self, layers: list[int], device: torch.device) -> _RowPlan:
        shapes = tuple(self.shapes[i] for i in layers)
        key = (tuple(layers), shapes)
        if key not in self._plans:  # once per set of layer shapes: these host-to-device copies sync on a GPU
            bin_start, channel_pos, shift, scale, first = [], [], [], [], 0
            for j, (n, c, block) in zip(layers, shapes):
                local = torch.arange(n, device=device).div(block, rounding_mode="floor").remainder(c)
                channel_pos.append(local.float() + (first + 0.5))
                bin_start.append(torch.full((n,), len(bin_start) * self.width + 0.5, device=device))
                lo, hi = self.ranges[j]
                # the float32 shift compute.bin_positions uses for this layer's range
                shift.append(torch.full((n,), 1.0 - lo * ((self.width - 2) / (hi - lo)), device=device))
                scale.append(torch.full((n,), (self.width - 2) / (hi - lo), device=device))
                first += c
            self._plans[key] = _RowPlan(
                offsets=torch.tensor([0] + [n for n, _, _ in shapes], device=device).cumsum(0),
                bin_start=torch.cat(bin_start), channel_pos=torch.cat(channel_pos), shift=torch.cat(shift),
                scale=torch.cat(scale) if len({self.ranges[j][1] - self.ranges[j][0] for j in layers}) > 1 else None,
                channel_offsets=torch.tensor([0] + [c for _, c, _ in shapes], device=device).cumsum(0),
                n_channels=first)
        return self._plans[key]


@dataclass(frozen=True)
class _RowPlan:
    """Index tensors for one set of layer shapes (DeviceRowBatch): where each layer's values start in the
    concatenated row, each value's first bin (+0.5), each value's channel (+0.5, numbered across the
    layers), each value's bin shift and scale (its layer's range: compute.bin_positions), and where each
    layer's channels start."""

    offsets: torch.Tensor
    bin_start: torch.Tensor
    channel_pos: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor | None  # each value's bin scale, where the layers' ranges differ in width
    channel_offsets: torch.Tensor
    n_channels: int
