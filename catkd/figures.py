"""Figures for the notebooks, and the two small helpers they need to feed them.

Everything here returns a ``matplotlib.figure.Figure`` made without pyplot, so a notebook
shows it once (as the cell's value) and nothing is left open; or, for ``cam_explorer``, an
ipywidgets box that redraws a figure when a control changes.

- ``pick(dataset, indices, device)``: test images as the model sees them and as a reader does.
- ``batched(model, inputs)``: a model's outputs over many inputs, a batch at a time, no grad.
- ``logit_check``: Eq. 1-4 on one image (bars) and over many (histogram of differences).
- ``cam_grid``: Figure 2 style CAMs of chosen classes, one row per image and model.
- ``cam_view`` / ``cam_explorer``: one image, one class, one or all models; the explorer
  (live ipywidgets, or a static figure for batch runs).
- ``accuracy_bars``: test accuracies of runs as labelled bars, with chance as a line.
- ``localisation_grid``: CAMs of several models side by side, over ground-truth object masks
  where there are some (chapters 6 and 7).
- ``seed_bars``: one panel per metric, a bar per run at the mean over seeds, each seed a dot.
- ``table_bars`` / ``table_lines``: a report table (``catkd.report``), mean and std over seeds.
- ``cost_accuracy``: accuracy against training time per method (Figure 7, right).

A "model output" is the pair ``(logits (N, K), cams (N, K, h, w))`` that a converted model
(``catkd.cam.convert``) returns; figures take them in a dict keyed by the model's name.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from catkd import data
from catkd.cam import upsample

__all__ = ["overlay", "pick", "batched", "logit_check", "cam_grid", "cam_view", "cam_explorer",
           "accuracy_bars", "localisation_grid", "seed_bars", "table_bars", "table_lines",
           "cost_accuracy"]

Outputs = Mapping[str, tuple[torch.Tensor, torch.Tensor]]

# The book shows a figure at most about 700 px wide, 7 inches at matplotlib's 100 dpi, and
# scales a wider one down, its text with it. The figures that fill the page (the CAM grids and
# the explorer, the metric panels) stay within that width and write no text below 9 pt.
PAGE_WIDTH = 7.0  # inches
TEXT_SIZE = 9  # points


def overlay(image: torch.Tensor, cam_map: torch.Tensor, alpha: float = 0.5,
            colormap: str = "jet") -> np.ndarray:
    """Blend one CAM over one image for display.

    image: (C, H, W) with C in {1, 3} and values in [0, 1]. cam_map: (h, w), any range; it is
    upsampled to H x W and min-max scaled to [0, 1]. Returns an (H, W, 3) float array in
    [0, 1], ready for ``plt.imshow``.
    """
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"overlay expects an image of shape (1 or 3, H, W), got "
                         f"{tuple(image.shape)}")
    if cam_map.dim() != 2:
        raise ValueError(f"overlay expects one CAM of shape (h, w), got {tuple(cam_map.shape)}")
    height, width = image.shape[1:]
    heat = upsample(cam_map[None, None].float(), (height, width))[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
    colored = matplotlib.colormaps[colormap](heat.detach().cpu().numpy())[..., :3]
    rgb = image.detach().float().cpu().expand(3, height, width).permute(1, 2, 0).numpy()
    return np.clip((1 - alpha) * rgb + alpha * colored, 0.0, 1.0)


def pick(dataset: data.ImageDataset, indices: Sequence[int] | torch.Tensor,
         device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The images at ``indices`` as ``(inputs, pixels, labels)``.

    inputs: float32 (n, C, H, W) normalised as the training loader does (on ``device``);
    pixels: float32 (n, C, H, W) in [0, 1], for display (on the CPU); labels: int64 (n,) (CPU).
    """
    index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    if len(index) == 0:
        raise ValueError("pick needs at least one index")
    if index.min() < 0 or index.max() >= len(dataset):
        raise IndexError(f"indices must lie in 0..{len(dataset) - 1}, got {index.tolist()[:8]}")
    subset = dataclasses.replace(dataset, images=dataset.images[index],
                                 labels=dataset.labels[index], masks=None)
    loader = data.BatchLoader(subset, batch_size=len(index), train=False, device=device)
    inputs, _ = next(iter(loader))
    return inputs, subset.images.float() / 255, subset.labels.clone()


@torch.no_grad()
def batched(model: nn.Module, inputs: torch.Tensor, batch_size: int = 500):
    """``model(inputs)`` computed ``batch_size`` inputs at a time, without autograd.

    Returns what the model returns, concatenated over the batches: a tensor, or a tuple of
    tensors (a converted model's ``(logits, cams)``).
    """
    parts = [model(chunk) for chunk in inputs.split(batch_size)]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return tuple(torch.cat(group) for group in zip(*parts))


def _probabilities(outputs: Outputs) -> dict[str, torch.Tensor]:
    return {name: logits.detach().float().softmax(dim=1).cpu()
            for name, (logits, _) in outputs.items()}


def logit_check(original: torch.Tensor, cam_means: torch.Tensor, bias: torch.Tensor | None,
                class_names: Sequence[str], tolerance: float = 1e-5, image: int = 0,
                max_classes: int = 10) -> Figure:
    """Eq. 1-4 seen two ways.

    Left: for test image ``image``, each class's GAP(CAM) and bias as stacked bars, with the
    original model's logit as a dot on top (the ``max_classes`` classes of highest logit).
    Right: the histogram of |original logit - (GAP(CAM) + bias)| over every image and class,
    with ``tolerance`` marked. original, cam_means: (N, K); bias: (K,) or None.
    """
    original = original.detach().float().cpu()
    cam_means = cam_means.detach().float().cpu()
    bias = torch.zeros(original.shape[1]) if bias is None else bias.detach().float().cpu()
    if original.shape != cam_means.shape or bias.shape != original.shape[1:]:
        raise ValueError(f"original {tuple(original.shape)}, cam_means {tuple(cam_means.shape)} "
                         f"and bias {tuple(bias.shape)} must be (N, K), (N, K) and (K,)")
    figure = Figure(figsize=(10, 3.2), layout="constrained")
    bars, histogram = figure.subplots(1, 2, width_ratios=(3, 2))

    shown = original[image].argsort(descending=True)[:max_classes]
    x = np.arange(len(shown))
    means, offsets = cam_means[image, shown].numpy(), bias[shown].numpy()
    bars.bar(x, means, color="tab:blue", label="GAP(CAM$_i$)")
    # The bias bar starts where the CAM bar ends, whatever the signs.
    bars.bar(x, offsets, bottom=means, color="tab:orange", label="bias $b_i$")
    bars.scatter(x, original[image, shown].numpy(), color="black", zorder=3, s=18,
                 label="original logit")
    bars.axhline(0, color="grey", linewidth=0.5)
    bars.set_xticks(x, [class_names[i] for i in shown], rotation=30, ha="right", fontsize=8)
    bars.set_title("one test image: logit = GAP(CAM) + bias", fontsize=9)
    bars.legend(fontsize=7)

    difference = (original - (cam_means + bias[None])).abs().flatten().numpy()
    floor = 1e-10
    histogram.hist(np.maximum(difference, floor),
                   bins=np.logspace(np.log10(floor),
                                    np.log10(max(tolerance, difference.max(initial=0))) + 0.5, 40),
                   color="tab:blue")
    histogram.set_xscale("log")
    histogram.axvline(tolerance, color="tab:red", linestyle="--", label=f"tolerance {tolerance:g}")
    histogram.set_xlabel(f"|original - (GAP(CAM) + b)|  (0 shown at {floor:g})", fontsize=8)
    histogram.set_title(f"{original.shape[0]} images x {original.shape[1]} classes", fontsize=9)
    histogram.legend(fontsize=7)
    return figure


def _hide_frame(axis) -> None:
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_visible(False)


def cam_grid(pixels: torch.Tensor, outputs: Outputs, classes: torch.Tensor,
             class_names: Sequence[str], labels: torch.Tensor | None = None,
             size: float = 1.45) -> Figure:
    """CAMs of chosen classes overlaid on their images (Figure 2 of the paper).

    pixels: (n, C, H, W) images in [0, 1].
    outputs: {model name: (logits (n, K), cams (n, K, h, w))}.
    classes: int64 (n, k), the classes to show for each image (e.g. a model's top k).
    One row per image and model: the image (in its first row), then for each class the CAM
    over the image, titled with the class name and that model's probability for it. Panels
    of ``size`` inches, smaller where the grid would be wider than the page.
    """
    if not outputs:
        raise ValueError("cam_grid needs at least one model's outputs")
    classes = torch.as_tensor(classes).cpu()
    n, k = classes.shape
    if len(pixels) != n:
        raise ValueError(f"{len(pixels)} images but classes for {n}")
    probabilities = _probabilities(outputs)
    rows = n * len(outputs)
    size = min(size, PAGE_WIDTH / (k + 1))  # the page's width, not wider: text keeps its size
    figure = Figure(figsize=(size * (k + 1), size * 1.3 * rows), layout="constrained")
    axes = np.asarray(figure.subplots(rows, k + 1, squeeze=False))
    for i in range(n):
        for m, (name, (_, cams)) in enumerate(outputs.items()):
            row = axes[i * len(outputs) + m]
            if m == 0:
                row[0].imshow(_display(pixels[i]), cmap="gray", vmin=0, vmax=1)
                if labels is not None:
                    row[0].set_title(f"label\n{class_names[int(labels[i])]}",
                                     fontsize=TEXT_SIZE)
            row[0].axis("off")
            for j, cls in enumerate(classes[i].tolist()):
                row[j + 1].imshow(overlay(pixels[i], cams[i, cls].detach().cpu()))
                row[j + 1].set_title(f"{class_names[cls]}\n{probabilities[name][i, cls]:.2f}",
                                     fontsize=TEXT_SIZE)
                _hide_frame(row[j + 1])
            row[1].set_ylabel(name, fontsize=TEXT_SIZE)
    return figure


def _display(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> what imshow takes: (H, W) grey or (H, W, 3) colour."""
    image = image.detach().float().cpu()
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def cam_view(pixels: torch.Tensor, outputs: Outputs, class_names: Sequence[str], image: int,
             cls: int, models: Sequence[str] | None = None,
             labels: torch.Tensor | None = None) -> Figure:
    """One image and one class: the image, then the class's CAM of each model in ``models``
    (default: all), titled with the model's probability for the class and its own top class."""
    names = list(outputs) if models is None else list(models)
    unknown = [name for name in names if name not in outputs]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {list(outputs)}")
    probabilities = _probabilities(outputs)
    figure = Figure(figsize=(2.6 * (1 + len(names)), 2.9), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, 1 + len(names)))
    axes[0].imshow(_display(pixels[image]), cmap="gray", vmin=0, vmax=1)
    title = f"test image {image}"
    if labels is not None:
        title += f"\nlabel: {class_names[int(labels[image])]}"
    axes[0].set_title(title, fontsize=9)
    axes[0].axis("off")
    for axis, name in zip(axes[1:], names):
        axis.imshow(overlay(pixels[image], outputs[name][1][image, cls].detach().cpu()))
        top = int(probabilities[name][image].argmax())
        probability = probabilities[name][image, cls]
        axis.set_title(f"{name}: CAM of {class_names[cls]}\np = {probability:.2f} "
                       f"(top: {class_names[top]})", fontsize=9)
        axis.axis("off")
    return figure


def cam_explorer(pixels: torch.Tensor, outputs: Outputs, class_names: Sequence[str],
                 labels: torch.Tensor | None = None, live: bool = True, static_classes: int = 5):
    """Explore CAMs: pick an image, a class and a model (or all models side by side).

    live=True: an ipywidgets box that redraws ``cam_view`` when a control changes (it needs a
    running kernel, e.g. JupyterLab); the class starts at the first model's top class for the
    chosen image. live=False: a static stand-in for batch runs and books: ``cam_grid`` of the
    first image, all models, the first model's top ``static_classes`` classes (all if fewer;
    five fit the page's width with legible titles).
    """
    first = next(iter(outputs))
    top = _probabilities(outputs)[first].argsort(dim=1, descending=True)
    if not live:
        k = min(static_classes, len(class_names))
        return cam_grid(pixels[:1], {name: (logits[:1], cams[:1])
                                     for name, (logits, cams) in outputs.items()},
                        top[:1, :k], class_names, None if labels is None else labels[:1])

    import ipywidgets as widgets
    from IPython.display import display

    image = widgets.IntSlider(value=0, min=0, max=len(pixels) - 1, description="image")
    cls = widgets.Dropdown(options=[(name, i) for i, name in enumerate(class_names)],
                           value=int(top[0, 0]), description="class")
    model = widgets.ToggleButtons(options=[*outputs, "side by side"], value="side by side",
                                  description="CAM of")
    # A new image starts at the first model's top class for it.
    image.observe(lambda change: setattr(cls, "value", int(top[change["new"], 0])),
                  names="value")

    def draw(image: int, cls: int, model: str) -> None:
        models = list(outputs) if model == "side by side" else [model]
        display(cam_view(pixels, outputs, class_names, image, cls, models, labels))

    view = widgets.interactive_output(draw, {"image": image, "cls": cls, "model": model})
    return widgets.VBox([widgets.HBox([image, cls]), model, view])


def accuracy_bars(accuracies: Mapping[str, float], chance: float | None = None,
                  title: str = "", size: tuple[float, float] | None = None) -> Figure:
    """Test accuracies (%) as one labelled bar per run, in the given order.

    accuracies: {run label: accuracy in %}; chance: drawn as a dashed line when given.
    Each bar carries its value; the y axis spans 0-100.
    """
    if not accuracies:
        raise ValueError("accuracy_bars needs at least one accuracy")
    names, values = list(accuracies), [float(value) for value in accuracies.values()]
    figure = Figure(figsize=size or (1.2 + 0.9 * len(names), 2.8), layout="constrained")
    axis = figure.subplots()
    bars = axis.bar(range(len(names)), values, color="tab:blue")
    axis.bar_label(bars, labels=[f"{value:.1f}" for value in values], fontsize=8)
    axis.set_xticks(range(len(names)), names, fontsize=8)
    axis.set_ylim(0, 105)
    axis.set_ylabel("test accuracy (%)", fontsize=9)
    if chance is not None:
        axis.axhline(chance, color="tab:red", linestyle="--", linewidth=1, label="chance")
        axis.legend(fontsize=8, loc="lower right")
    if title:
        axis.set_title(title, fontsize=9)
    return figure


def localisation_grid(pixels: torch.Tensor, masks: torch.Tensor | None,
                      maps: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None,
                      class_names: Sequence[str] | None = None, size: float = 1.45) -> Figure:
    """CAMs of several models side by side, over their object masks where there are some: one
    row per image, one column per model (chapter 6: students over masks; chapter 7: CNNs and
    vision transformers, maps of any size each).

    pixels: (n, C, H, W) images in [0, 1]; masks: bool (n, H, W) object masks, or None.
    maps: {model name: (n, h, w)}, each image's CAM of one class (e.g. its label).
    The first column is the image, titled with its label when ``labels`` and ``class_names``
    are given; each other panel is a model's CAM over the image, with the mask's outline in
    white if ``masks`` are given. Panels of ``size`` inches.
    """
    if not maps:
        raise ValueError("localisation_grid needs at least one model's CAMs")
    n = len(pixels)
    if masks is not None and masks.shape != (n, *pixels.shape[2:]):
        raise ValueError(f"masks must be (n, H, W) = {(n, *pixels.shape[2:])}, got "
                         f"{tuple(masks.shape)}")
    wrong = {name: tuple(m.shape) for name, m in maps.items() if m.dim() != 3 or len(m) != n}
    if wrong:
        raise ValueError(f"each model's CAMs must be (n, h, w) with n = {n}, got {wrong}")
    figure = Figure(figsize=(size * (1 + len(maps)), size * 1.15 * n), layout="constrained")
    axes = np.asarray(figure.subplots(n, 1 + len(maps), squeeze=False))
    for i in range(n):
        axes[i, 0].imshow(_display(pixels[i]), cmap="gray", vmin=0, vmax=1)
        if labels is not None and class_names is not None:
            axes[i, 0].set_title(class_names[int(labels[i])], fontsize=8)
        axes[i, 0].axis("off")
        for axis, (name, model_maps) in zip(axes[i, 1:], maps.items()):
            axis.imshow(overlay(pixels[i], model_maps[i].detach().cpu()))
            if masks is not None:
                axis.contour(masks[i].detach().cpu().float().numpy(), levels=[0.5],
                             colors="white", linewidths=0.8)
            if i == 0:
                axis.set_title(name, fontsize=9)
            axis.axis("off")
    return figure


def seed_bars(values: Mapping[str, Mapping[str, Sequence[float]]],
              references: Mapping[str, Mapping[str, float]] | None = None) -> Figure:
    """One panel per metric, at most three a row across the page: a bar per run label at the
    mean over seeds, the standard deviation as an error bar and each seed's value as a dot.

    values: {metric name: {run label: one value per seed}}; every metric lists the same labels.
    references: {line label: {metric name: value}}, drawn as dashed lines (e.g. a teacher, chance)
    in the panels of the metrics they give.
    """
    if not values:
        raise ValueError("seed_bars needs at least one metric")
    labels = list(next(iter(values.values())))
    if any(list(per_label) != labels for per_label in values.values()):
        raise ValueError(f"every metric must list the same run labels, in order: {labels}")
    columns = min(3, len(values))
    rows = -(-len(values) // columns)
    figure = Figure(figsize=(PAGE_WIDTH * columns / 3, 2.4 * rows), layout="constrained")
    grid = np.asarray(figure.subplots(rows, columns, squeeze=False)).flatten()
    for unused in grid[len(values):]:
        figure.delaxes(unused)
    axes = grid[:len(values)]
    x = np.arange(len(labels))
    for axis, (metric, per_label) in zip(axes, values.items()):
        samples = [np.asarray(per_label[label], dtype=float) for label in labels]
        means = [sample.mean() for sample in samples]
        spreads = [sample.std(ddof=1) if len(sample) > 1 else 0.0 for sample in samples]
        axis.bar(x, means, yerr=spreads, color="tab:blue", alpha=0.6, capsize=3)
        for position, sample in zip(x, samples):
            axis.scatter(np.full(len(sample), position), sample, color="black", s=8, zorder=3)
        for (line, per_metric), colour in zip((references or {}).items(),
                                              ("tab:red", "tab:grey", "tab:green")):
            if metric in per_metric:
                axis.axhline(per_metric[metric], color=colour, linestyle="--", linewidth=1,
                             label=line)
        axis.set_xticks(x, labels, fontsize=TEXT_SIZE, rotation=30)
        axis.tick_params(axis="y", labelsize=TEXT_SIZE)
        axis.set_title(metric, fontsize=TEXT_SIZE)
    if references:
        axes[0].legend(fontsize=TEXT_SIZE)
    return figure


def table_bars(cells: Sequence, title: str = "", size: tuple[float, float] | None = None) -> Figure:
    """A report table (``catkd.report.cells``) as bars: one panel per column, one bar per row
    at the mean best accuracy over seeds, the std as an error bar, each seed as a dot, and the
    paper's number as a red dash where it reports the cell. Cells with no finished run are left
    out (the table says which)."""
    finished = [cell for cell in cells if cell.finished]
    if not finished:
        raise ValueError("table_bars needs a cell with at least one finished run")
    columns = list(dict.fromkeys(cell.column for cell in finished))
    width = max(len([cell for cell in finished if cell.column == column]) for column in columns)
    figure = Figure(figsize=size or (0.6 + (0.5 * width + 0.4) * len(columns), 3.0),
                    layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(columns), sharey=True))
    # One y range for the panels, which share their axis: it holds every seed of every column.
    low = min(min(cell.best) for cell in finished)
    high = max(max(cell.best) for cell in finished)
    for axis, column in zip(axes, columns):
        group = [cell for cell in finished if cell.column == column]
        means, stds = zip(*(cell.mean_std("best") for cell in group))
        x = np.arange(len(group))
        axis.bar(x, means, yerr=stds, color="tab:blue", alpha=0.6, capsize=3)
        for position, cell in zip(x, group):
            axis.scatter(np.full(len(cell.best), position), cell.best, color="black", s=6,
                         zorder=3)
            if cell.paper is not None:
                axis.hlines(cell.paper, position - 0.4, position + 0.4, color="tab:red",
                            linewidth=2, zorder=4, label="paper")
        axis.set_xticks(x, [cell.row for cell in group], fontsize=8, rotation=45, ha="right")
        axis.set_title(column, fontsize=8)
        axis.set_ylim(max(0.0, low - 3), min(100.0, high + 2))
    axes[0].set_ylabel("best test accuracy (%)", fontsize=9)
    with_paper = [axis for axis in axes if axis.get_legend_handles_labels()[1]]
    if with_paper:
        handles, labels = with_paper[0].get_legend_handles_labels()
        with_paper[0].legend(handles[:1], labels[:1], fontsize=7, loc="lower left")
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


def table_lines(cells: Sequence, x_axis: str = "column", xlabel: str = "", title: str = "",
                log_x: bool = False, size: tuple[float, float] = (4.2, 3.0)) -> Figure:
    """A report table whose rows or columns are numbers (beta, a fraction, teacher epochs) as
    lines: x from each cell's ``x_axis`` ("column" or "row", read as a number), one line per
    label of the other axis at the mean best accuracy, with the std as a band."""
    finished = [cell for cell in cells if cell.finished]
    if not finished:
        raise ValueError("table_lines needs a cell with at least one finished run")
    other = "row" if x_axis == "column" else "column"
    figure = Figure(figsize=size, layout="constrained")
    axis = figure.subplots()
    for name in dict.fromkeys(getattr(cell, other) for cell in finished):
        line = sorted((float(getattr(cell, x_axis)), *cell.mean_std("best"))
                      for cell in finished if getattr(cell, other) == name)
        x, means, stds = (np.array(values) for values in zip(*line))
        axis.plot(x, means, marker="o", markersize=3, label=name)
        axis.fill_between(x, means - stds, means + stds, alpha=0.2)
    if log_x:
        axis.set_xscale("log")
    axis.set_xlabel(xlabel or x_axis, fontsize=9)
    axis.set_ylabel("best test accuracy (%)", fontsize=9)
    axis.legend(fontsize=7)
    if title:
        axis.set_title(title, fontsize=9)
    return figure


def cost_accuracy(points: Mapping[str, tuple[float, float, int]], xlabel: str,
                  title: str = "", size: tuple[float, float] = (4.6, 3.2)) -> Figure:
    """Figure 7 (right): accuracy against training cost, one labelled point per method.

    points: {method: (cost, e.g. seconds per epoch; accuracy %; extra trainable parameters)};
    methods with extra parameters are drawn as squares, the others as circles.
    """
    if not points:
        raise ValueError("cost_accuracy needs at least one method")
    figure = Figure(figsize=size, layout="constrained")
    axis = figure.subplots()
    for name, (cost, accuracy, extra) in points.items():
        axis.scatter(cost, accuracy, marker="s" if extra else "o", s=30,
                     color="tab:red" if name == "catkd" else "tab:blue")
        axis.annotate(name, (cost, accuracy), textcoords="offset points", xytext=(4, 3),
                      fontsize=7)
    axis.set_xlabel(xlabel, fontsize=9)
    axis.set_ylabel("best test accuracy (%)", fontsize=9)
    axis.set_title(title or "squares: methods with extra trainable parameters", fontsize=9)
    return figure
