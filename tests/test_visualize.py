"""medmamba.visualize: figures, their axes and artists, overlay colours, logs, and effective receptive fields."""

from __future__ import annotations

import contextlib
import csv
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import LogNorm, to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from monai.data import MetaTensor  # noqa: E402
from torch import nn  # noqa: E402

from medmamba.transforms.ct_window import CT_WINDOWS  # noqa: E402
from medmamba.visualize import (  # noqa: E402
    ERFResult,
    class_colors,
    display_range,
    effective_receptive_field,
    erf_mass_radius,
    error_categories,
    error_map,
    fill_zero_norm_weights,
    label_overlay,
    label_to_rgba,
    load_training_logs,
    montage,
    montage_indices,
    orthogonal_views,
    plot_effective_receptive_fields,
    plot_training_curves,
    prediction_overview,
    read_metrics_file,
    read_tensorboard_scalars,
    slice_probability_strip,
)

CLASS_NAMES = ["background", "one", "two", "three"]


@pytest.fixture(scope="module")
def png_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("visualize_png")


def _save(fig: Figure, png_dir: Path, name: str) -> Path:
    path = png_dir / f"{name}.png"
    fig.savefig(path, dpi=60, bbox_inches="tight")
    assert path.stat().st_size > 1000
    return path


def _volume(shape: tuple[int, int, int] = (20, 24, 16)) -> np.ndarray:
    """A smooth blob with a bright corner marker, deterministic."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    vol = 100.0 * np.exp(-2.0 * sum(g**2 for g in grids))
    return vol.astype(np.float32)


def _image_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.images]


def _legend_texts(ax) -> list[str]:
    leg = ax.get_legend()
    return [] if leg is None else [t.get_text() for t in leg.get_texts()]


# --------------------------------------------------------------------------------------------------
# orthogonal views, display range, montage


def test_orthogonal_views_three_image_axes_with_crosshair(png_dir: Path) -> None:
    vol = _volume()
    fig = orthogonal_views(vol, point=(5, 6, 7))
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 and len(_image_axes(fig)) == 3
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split()[0] for t in titles] == ["axial", "coronal", "sagittal"]
    assert "index 7" in titles[0] and "index 6" in titles[1] and "index 5" in titles[2]
    for ax in fig.axes:
        assert len(ax.images) == 1
        assert len(ax.get_lines()) == 2  # crosshair
    # the axial image is the slice k=7, shown with A up and R on the left (identity affine = RAS)
    axial = np.asarray(fig.axes[0].images[0].get_array())
    np.testing.assert_allclose(axial, vol[:, :, 7].T[::-1, ::-1])
    _save(fig, png_dir, "orthogonal_views")


def test_orthogonal_views_metatensor_spacing_sets_aspect() -> None:
    affine = torch.diag(torch.tensor([0.5, 0.5, 2.5, 1.0], dtype=torch.float64))
    img = MetaTensor(torch.from_numpy(_volume())[None], affine=affine)
    fig = orthogonal_views(img, colorbar=True)
    assert len(_image_axes(fig)) == 3 and len(fig.axes) == 4  # + colour bar
    aspects = [ax.get_aspect() for ax in _image_axes(fig)]
    assert aspects == pytest.approx([1.0, 5.0, 5.0])


@pytest.mark.parametrize(
    ("diag", "expected_row_col"),
    [
        ((1.0, 1.0, 1.0), (23, 19)),  # RAS: i=0 is most left (screen right), j=0 most posterior (bottom)
        ((-1.0, -1.0, 1.0), (23, 0)),  # LPS-stored: i=0 is most right (screen left)
    ],
)
def test_views_follow_the_affine_orientation(diag: tuple[float, float, float], expected_row_col: tuple) -> None:
    vol = np.zeros((20, 24, 16), dtype=np.float32)
    vol[0, 0, 8] = 1.0
    affine = np.diag([*diag, 1.0])
    fig = orthogonal_views(vol, point=(0, 0, 8), affine=affine, vmin=0, vmax=1)
    axial = np.asarray(fig.axes[0].images[0].get_array())
    row, col = np.unravel_index(np.argmax(axial), axial.shape)
    if diag[1] < 0:  # j increases towards P: j=0 is most anterior, top row
        expected_row_col = (0, expected_row_col[1])
    assert (row, col) == expected_row_col
    # the crosshair passes through the marker
    vline, hline = fig.axes[0].get_lines()
    assert vline.get_xdata()[0] == col and hline.get_ydata()[0] == row


def test_ct_window_preset_from_the_transform_table() -> None:
    hu = np.linspace(-1000, 1000, 20 * 24 * 16, dtype=np.float32).reshape(20, 24, 16)
    level, width = CT_WINDOWS["brain"]
    fig = orthogonal_views(hu, window="brain")
    for ax in fig.axes:
        assert ax.images[0].get_clim() == (level - width / 2, level + width / 2)
    assert "brain window" in fig.get_suptitle()
    assert display_range(hu, (40, 400)) == (-160.0, 240.0)
    with pytest.raises(ValueError, match="window='nope'"):
        orthogonal_views(hu, window="nope")


def test_mr_percentile_range_and_errors() -> None:
    vol = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    assert display_range(vol, percentiles=(0, 100)) == (0.0, 999.0)
    lo, hi = display_range(vol, percentiles=(1, 99))
    assert lo == pytest.approx(9.99) and hi == pytest.approx(989.01)
    with pytest.raises(ValueError, match="percentiles"):
        display_range(vol, percentiles=(99, 1))
    with pytest.raises(ValueError, match="point="):
        orthogonal_views(vol, point=(10, 0, 0))
    with pytest.raises(ValueError, match="volume must be 3D"):
        orthogonal_views(vol[0])
    with pytest.raises(TypeError, match="volume must be"):
        orthogonal_views("not an array")


def test_montage_grid_and_indices(png_dir: Path) -> None:
    vol = _volume()
    label = np.zeros(vol.shape, dtype=np.int64)
    label[8:12, 8:12, 4:10] = 1
    fig = montage(vol, n_slices=6, ncols=4, label=label, colors={1: "red"})
    assert len(fig.axes) == 6  # the 2 unused grid cells are removed
    assert all(len(ax.images) == 2 for ax in fig.axes)  # slice + label overlay
    shown = [int(ax.texts[0].get_text()) for ax in fig.axes]
    assert shown == montage_indices(16, 6)
    assert shown == sorted(shown) and len(set(shown)) == 6
    _save(fig, png_dir, "montage")
    fig = montage(torch.from_numpy(vol), view="coronal", indices=[0, 5, 23])
    assert [int(ax.texts[0].get_text()) for ax in fig.axes] == [0, 5, 23]
    assert montage_indices(4, 10) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="indices"):
        montage(vol, indices=[99])


# --------------------------------------------------------------------------------------------------
# overlays and errors


def _slice_and_label() -> tuple[np.ndarray, np.ndarray]:
    img = np.linspace(0, 1, 10 * 12, dtype=np.float32).reshape(10, 12)
    lab = np.zeros((10, 12), dtype=np.int64)
    lab[1:4, 1:5] = 1
    lab[6:9, 7:11] = 3
    return img, lab


def test_filled_overlay_colours_the_right_classes(png_dir: Path) -> None:
    img, lab = _slice_and_label()
    fig = label_overlay(img, lab, class_names=CLASS_NAMES, colors={1: "red", 3: (0.0, 0.0, 1.0)}, alpha=0.5)
    (ax,) = fig.axes
    assert len(ax.images) == 2
    rgba = np.asarray(ax.images[1].get_array())
    assert rgba.shape == (10, 12, 4)
    np.testing.assert_allclose(rgba[lab == 1], np.tile([1.0, 0.0, 0.0, 0.5], ((lab == 1).sum(), 1)))
    np.testing.assert_allclose(rgba[lab == 3], np.tile([0.0, 0.0, 1.0, 0.5], ((lab == 3).sum(), 1)))
    assert np.all(rgba[lab == 0][:, 3] == 0.0)
    # legend: the classes present (class 2 is absent), in the class colours
    assert _legend_texts(ax) == ["one", "three"]
    handles = ax.get_legend().legend_handles
    assert to_rgba(handles[0].get_facecolor()) == to_rgba("red")
    assert to_rgba(handles[1].get_facecolor()) == (0.0, 0.0, 1.0, 1.0)
    _save(fig, png_dir, "label_overlay")


def test_default_colours_and_label_to_rgba() -> None:
    cols = class_colors([0, 1, 2, 11])
    assert set(cols) == {1, 2, 11}
    assert cols[1] == cols[11] == to_rgba("tab:blue") and cols[2] == to_rgba("tab:orange")
    rgba = label_to_rgba(np.array([[0, 2]]), alpha=0.3)
    np.testing.assert_allclose(rgba[0, 1], [*to_rgba("tab:orange")[:3], 0.3])
    with pytest.raises(ValueError, match="label must hold integer"):
        label_to_rgba(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="alpha"):
        label_to_rgba(np.zeros((2, 2), dtype=int), alpha=2.0)


def test_contour_overlay_one_contour_set_per_class() -> None:
    img, lab = _slice_and_label()
    fig = label_overlay(img, lab, class_names={1: "liver", 3: "tumour"}, mode="contour")
    (ax,) = fig.axes
    assert len(ax.images) == 1 and len(ax.collections) == 2
    assert _legend_texts(ax) == ["liver", "tumour"]
    with pytest.raises(ValueError, match="mode="):
        label_overlay(img, lab, mode="outline")
    with pytest.raises(ValueError, match="label has shape"):
        label_overlay(img, lab[:5])


def test_overlay_of_a_volume_picks_the_most_labelled_slice_and_draws_into_ax() -> None:
    vol = _volume()
    lab = np.zeros(vol.shape, dtype=np.int64)
    lab[5:9, 5:9, 11] = 2
    lab[5:7, 5:7, 3] = 2
    host = Figure()
    ax = host.add_subplot()
    fig = label_overlay(MetaTensor(torch.from_numpy(vol)[None]), torch.from_numpy(lab)[None], ax=ax)
    assert fig is host
    assert "axial 11" in ax.get_title()
    assert _legend_texts(ax) == ["class 2"]
    rgba = np.asarray(ax.images[1].get_array())
    assert (rgba[..., 3] > 0).sum() == 16


def test_error_categories_and_error_map(png_dir: Path) -> None:
    label = np.array([[0, 0, 1, 1], [0, 2, 2, 0]])
    pred = np.array([[0, 1, 1, 0], [0, 2, 1, 0]])
    cat = error_categories(pred, label)
    np.testing.assert_array_equal(cat, [[0, 2, 1, 3], [0, 1, 4, 0]])
    img = np.zeros((2, 4), dtype=np.float32)
    fig = error_map(img, pred, label)
    (ax,) = fig.axes
    assert _legend_texts(ax) == [
        "true positive (2 px)",
        "false positive (1 px)",
        "false negative (1 px)",
        "wrong class (1 px)",
    ]
    rgba = np.asarray(ax.images[1].get_array())
    assert tuple(rgba[0, 1, :3]) == to_rgba("tab:red")[:3]  # false positive
    assert tuple(rgba[0, 3, :3]) == to_rgba("tab:blue")[:3]  # false negative
    assert rgba[0, 0, 3] == 0.0
    fig = error_map(img, pred, label, show_true_positives=False)
    assert len(_legend_texts(fig.axes[0])) == 3
    with pytest.raises(ValueError, match="prediction has shape"):
        error_categories(pred[:1], label)


def test_prediction_overview_three_panels(png_dir: Path) -> None:
    vol = _volume()
    label = np.zeros(vol.shape, dtype=np.int64)
    label[4:12, 6:14, 5:9] = 1
    label[12:16, 10:18, 5:9] = 2
    pred = np.roll(label, 2, axis=0)
    fig = prediction_overview(vol, label, pred, class_names=["bg", "organ", "lesion"])
    assert len(fig.axes) == 3 and all(len(ax.images) == 2 for ax in fig.axes)
    assert _legend_texts(fig.axes[0]) == ["organ", "lesion"]
    assert any(t.startswith("false positive") for t in _legend_texts(fig.axes[2]))
    _save(fig, png_dir, "prediction_overview")


# --------------------------------------------------------------------------------------------------
# per-slice probability strip


def test_slice_probability_strip_lines(png_dir: Path) -> None:
    probs = np.array([0.1, 0.2, 0.7, 0.9, 0.8, 0.3, 0.1, 0.05])
    gt = np.array([0, 0, 1, 1, 1, 0, 0, 1])
    fig = slice_probability_strip(probs, slice_labels=gt, class_name="lesion", volume_label=1)
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and len(ax.child_axes) == 1  # the colour strip is an inset
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"slice probability", "threshold", f"volume (mean) = {probs.mean():.3f}"}
    np.testing.assert_allclose(lines["threshold"].get_ydata(), [0.5, 0.5])
    np.testing.assert_allclose(lines["slice probability"].get_ydata(), probs)
    assert len(ax.patches) == 2  # two runs of positive ground-truth slices
    assert len(_legend_texts(ax)) == 4
    assert "negative" in ax.get_title() and "ground truth: positive" in ax.get_title()
    _save(fig, png_dir, "slice_probability_strip")


def test_slice_probability_strip_from_logits_matches_the_inferer_aggregation() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-2.0, 3.0, 1.0, -1.0]])  # (K, S)
    fig = slice_probability_strip(logits, logits=True, aggregate="max", threshold=0.3, heat_strip=False)
    ax = fig.axes[0]
    lines = {ln.get_label().split(" =")[0]: ln for ln in ax.get_lines()}
    np.testing.assert_allclose(lines["slice probability"].get_ydata(), torch.softmax(logits, 0)[1].numpy())
    expected = torch.softmax(logits.amax(-1), 0)[1].item()
    np.testing.assert_allclose(lines["volume (max)"].get_ydata(), [expected, expected])
    np.testing.assert_allclose(lines["threshold"].get_ydata(), [0.3, 0.3])
    with pytest.raises(ValueError, match="not probabilities"):
        slice_probability_strip(logits)
    with pytest.raises(ValueError, match="slice_labels has 3"):
        slice_probability_strip(np.full(4, 0.5), slice_labels=[0, 1, 0])
    with pytest.raises(ValueError, match="threshold"):
        slice_probability_strip(np.full(4, 0.5), threshold=1.5)


# --------------------------------------------------------------------------------------------------
# training curves


def _write_tensorboard(log_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(log_dir)) as w:
        for it in range(1, 21):
            w.add_scalar("train_loss", 1.0 / it, it)
        for ep in range(1, 6):
            w.add_scalar("val_mean_dice", 0.1 * ep, ep)
            w.add_scalar("val_accuracy", 0.5 + 0.05 * ep, ep)


def test_tensorboard_logs_to_curves(tmp_path: Path, png_dir: Path) -> None:
    _write_tensorboard(tmp_path / "logs")
    curves = read_tensorboard_scalars(tmp_path)
    assert set(curves) == {"train_loss", "val_mean_dice", "val_accuracy"}
    np.testing.assert_allclose(curves["val_mean_dice"].x, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(curves["val_mean_dice"].y, [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-6)
    fig = plot_training_curves(tmp_path, log_loss=True)
    loss_ax, metric_ax = fig.axes
    assert loss_ax.get_title() == "loss" and len(loss_ax.get_lines()) == 1 and loss_ax.get_yscale() == "log"
    assert metric_ax.get_title() == "metrics" and len(metric_ax.get_lines()) == 2
    assert sorted(_legend_texts(metric_ax)) == ["val_accuracy", "val_mean_dice"]
    _save(fig, png_dir, "training_curves")
    fig = plot_training_curves(tmp_path, keys=["train_loss"], smoothing=0.6)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 2  # raw (faint) + smoothed
    with pytest.raises(ValueError, match="keys"):
        plot_training_curves(tmp_path, keys=["nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no TensorBoard"):
        read_tensorboard_scalars(tmp_path / "empty")


def test_csv_and_json_metric_files(tmp_path: Path) -> None:
    rows = [{"epoch": e, "loss": 1.0 / e, "val_dice": 0.2 * e, "lr": 1e-3 / e, "note": "x"} for e in range(1, 5)]
    csv_path = tmp_path / "metrics.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        fh.write("5,,0.9,,x\n")  # empty cells are skipped per column
    curves = read_metrics_file(csv_path)
    assert set(curves) == {"loss", "val_dice", "lr"}  # the non-numeric column is dropped
    assert curves["val_dice"].x_name == "epoch"
    np.testing.assert_allclose(curves["val_dice"].x, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(curves["loss"].x, [1, 2, 3, 4])
    fig = plot_training_curves(csv_path)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "metrics", "learning rate"]
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 1, 1]
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)

    records = tmp_path / "metrics.json"
    records.write_text(json.dumps(rows))
    columns = tmp_path / "columns.json"
    columns.write_text(json.dumps({"iteration": [10, 20], "loss": [0.5, 0.25]}))
    series = tmp_path / "series.json"
    series.write_text(json.dumps({"val_auc": [[1, 0.6], [2, 0.7]]}))
    lines = tmp_path / "log.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in rows[:2]))
    assert set(read_metrics_file(records)) == {"loss", "val_dice", "lr"}
    assert read_metrics_file(columns)["loss"].x_name == "iteration"
    np.testing.assert_allclose(read_metrics_file(series)["val_auc"].y, [0.6, 0.7])
    assert len(read_metrics_file(lines)["loss"].y) == 2
    merged = load_training_logs([columns, series])
    assert set(merged) == {"loss", "val_auc"}
    assert set(load_training_logs({"a": ([1, 2], [3, 4]), "b": [1.0, 0.5]})) == {"a", "b"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a metrics JSON"):
        read_metrics_file(bad)
    with pytest.raises(ValueError, match="x_key='step'"):
        read_metrics_file(csv_path, x_key="step")


# --------------------------------------------------------------------------------------------------
# effective receptive fields


def _conv_net(weight: torch.Tensor, stride: int = 1) -> nn.Module:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, stride=stride, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return conv


def test_erf_of_a_single_conv_is_its_3x3_neighbourhood() -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 2, 3, 3, generator=g)
    net = _conv_net(weight)
    res = effective_receptive_field(net, (2, 9, 9), n_images=3)
    # linear: d(sum_o y_o[4,4]) / dx_c[4+a, 4+b] = sum_o w[o, c, 1+a, 1+b]; |.| summed over c
    expected = np.zeros((9, 9))
    expected[3:6, 3:6] = weight.sum(0).abs().sum(0).double().numpy()
    np.testing.assert_allclose(res.raw, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.map, expected / expected.max(), rtol=1e-5, atol=1e-7)
    assert np.array_equal(res.map != 0, expected != 0)
    assert res.centre == (4.0, 4.0) and res.unit == (4, 4) and res.feature_shape == (9, 9) and res.n_images == 3
    s = res.summary()
    assert s["radius_90"] <= np.sqrt(2) + 1e-9 and set(s) >= {"radius_50", "radius_90", "area_1pct"}
    assert res.radii[0.5] == s["radius_50"]


def test_erf_stacked_and_strided_convs_and_given_inputs() -> None:
    ones = torch.ones(1, 1, 3, 3)
    two = nn.Sequential(_conv_net(ones), _conv_net(ones))
    res = effective_receptive_field(two, (1, 11, 11), n_images=1)
    # two all-ones 3x3 convs: the 5x5 neighbourhood with weights (1,2,3,2,1) x (1,2,3,2,1)
    tri = np.array([1, 2, 3, 2, 1], dtype=np.float64)
    expected = np.zeros((11, 11))
    expected[3:8, 3:8] = np.outer(tri, tri)
    np.testing.assert_allclose(res.raw, expected)
    strided = _conv_net(ones, stride=2)
    images = torch.randn(5, 1, 9, 9)
    res = effective_receptive_field(strided, inputs=images, batch_size=2, feature_fn=lambda x: [strided(x)])
    assert res.feature_shape == (5, 5) and res.centre == (4.0, 4.0) and res.n_images == 5
    assert np.flatnonzero(res.map.sum(0)).tolist() == [3, 4, 5]
    res = effective_receptive_field(strided, inputs=images, unit=(0, 0))
    assert np.flatnonzero(res.map.sum(0)).tolist() == [0, 1]
    with pytest.raises(ValueError, match="unit="):
        effective_receptive_field(strided, inputs=images, unit=(5, 0))
    with pytest.raises(ValueError, match="input_shape"):
        effective_receptive_field(strided)
    with pytest.raises(ValueError, match="reduction"):
        effective_receptive_field(strided, (1, 9, 9), reduction="square")
    with pytest.raises(ValueError, match="feature map"):
        effective_receptive_field(nn.Sequential(strided, nn.Flatten()), (1, 9, 9), n_images=1)


def test_erf_restores_the_mode_and_leaves_no_parameter_gradients() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    net.train()
    effective_receptive_field(net, (1, 8, 8), n_images=2)
    assert net.training and all(p.grad is None for p in net.parameters())
    net.eval()
    effective_receptive_field(net, (1, 8, 8), n_images=2)
    assert not net.training


def test_erf_mass_radius_by_hand() -> None:
    m = np.zeros((9, 9))
    m[4, 4] = 1.0
    m[4, 7] = 1.0
    assert erf_mass_radius(m, 0.5) == 0.0
    assert erf_mass_radius(m, 0.9) == 3.0
    assert erf_mass_radius(np.zeros((3, 3)), 0.5) == 0.0
    with pytest.raises(ValueError, match="fraction"):
        erf_mass_radius(m, 0.0)


def _tiny_mobilemamba() -> nn.Module:
    from medmamba.networks import MobileMamba

    torch.manual_seed(0)
    model = MobileMamba(
        None,
        in_channels=1,
        num_classes=0,
        embed_dim=(32, 48, 64),
        depth=(1, 1, 1),
        global_ratio=(0.8, 0.7, 0.6),
        local_ratio=(0.2, 0.2, 0.3),
        kernels=(7, 5, 3),
        ssm_ratio=2,
        drop_path=0.0,
    )
    # untrained, the zero-initialised residual branches make every block an identity
    assert fill_zero_norm_weights(model) > 0
    assert fill_zero_norm_weights(model) == 0
    return model


@contextlib.contextmanager
def _fast_cpu() -> Iterator[None]:
    """One thread and plain CPU convolutions for these tiny networks: oneDNN's first call per conv
    shape, and intra-op threads on a busy machine, cost seconds; both settings are restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "TF32 on oneDNN is for Intel GPUs"
            with torch.backends.mkldnn.flags(enabled=False):
                yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    return _tiny_mobilemamba()


@pytest.fixture(scope="module")
def tiny_erfs(tiny_model: nn.Module) -> dict[str, ERFResult]:
    model = tiny_model
    with _fast_cpu():
        return {
            "stem (stride 16)": effective_receptive_field(model, (1, 64, 64), 2, "cpu", feature_fn=model.stem),
            "stage 1 (stride 16)": effective_receptive_field(
                model, (1, 64, 64), 2, "cpu", feature_fn=lambda x: model.forward_features(x)[0]
            ),
            "stage 3 (stride 64)": effective_receptive_field(model, (1, 64, 64), 2, "cpu"),
        }


def test_erf_of_a_small_mobilemamba_reaches_far_from_the_centre(tiny_erfs: dict[str, ERFResult]) -> None:
    stem, stage1 = tiny_erfs["stem (stride 16)"], tiny_erfs["stage 1 (stride 16)"]
    last = tiny_erfs["stage 3 (stride 64)"]
    for res in tiny_erfs.values():
        assert res.map.shape == (64, 64) and np.all(np.isfinite(res.map)) and res.map.max() == 1.0
    # the conv stem (4 stride-2 3x3 convs) sees exactly its 31x31 theoretical field around unit (2, 2)
    assert stem.feature_shape == (4, 4) and stem.unit == (2, 2)
    support = np.argwhere(stem.map > 0)
    assert support.min(0).tolist() == [17, 17] and support.max(0).tolist() == [47, 47]
    # the MobileMamba block (WTE-Mamba global scan + MK-DeConv) spreads it over the whole input
    assert stage1.feature_shape == (4, 4)
    assert stage1.map[0, 0] > 0 and stage1.map[63, 0] > 0 and stage1.map[0, 63] > 0
    assert (stage1.map > 0).mean() > 0.99
    assert stage1.mass_radius(0.9) > stem.mass_radius(0.9)
    assert last.feature_shape == (1, 1) and last.map[0, 0] > 0


def test_erf_global_scan_branch_reaches_beyond_the_local_branch() -> None:
    """On a token grid, MRFFI's local branch (MK-DeConv, 7x7 depthwise) sees exactly the 7x7
    neighbourhood of the centre token; its global branch (WTE-Mamba selective scan) the whole grid."""
    from medmamba.networks.blocks import MRFFI

    torch.manual_seed(0)
    mrffi = MRFFI(32, global_ratio=0.5, local_ratio=0.5, kernel_size=7)
    fill_zero_norm_weights(mrffi)
    assert (mrffi.global_channels, mrffi.local_channels) == (16, 16)
    with _fast_cpu():
        local = effective_receptive_field(mrffi, (16, 15, 15), 4, feature_fn=mrffi.local_branch)
        glob = effective_receptive_field(mrffi, (16, 15, 15), 4, feature_fn=mrffi.global_branch)
        both = effective_receptive_field(mrffi, (32, 15, 15), 2)
    expected = np.zeros((15, 15), dtype=bool)
    expected[4:11, 4:11] = True
    assert np.array_equal(local.map > 0, expected)
    assert np.isfinite(glob.map).all() and (glob.map > 0).all()
    assert glob.mass_radius(0.9) > local.mass_radius(0.9)
    assert both.feature_shape == (15, 15) and (both.map > 0).all()


def test_plot_erf_comparison(tiny_erfs: dict[str, ERFResult], png_dir: Path) -> None:
    conv = effective_receptive_field(_conv_net(torch.ones(1, 1, 3, 3)), (1, 64, 64), n_images=1)
    results: dict[str, object] = {"3x3 conv": conv, **tiny_erfs, "raw map": tiny_erfs["stem (stride 16)"].raw}
    fig = plot_effective_receptive_fields(results, title="ERF")
    image_axes = _image_axes(fig)
    assert len(image_axes) == 5 and len(fig.axes) == 6  # + shared colour bar
    assert all(isinstance(ax.images[0].norm, LogNorm) for ax in image_axes)
    assert [ax.get_title().split("\n")[0] for ax in image_axes] == list(results)
    assert all(len(ax.patches) == 2 for ax in image_axes[:4]) and not image_axes[4].patches  # r50/r90 circles
    assert "r90 = " in image_axes[1].get_title()
    _save(fig, png_dir, "erf_comparison")
    fig = plot_effective_receptive_fields({"conv": conv.map}, log_scale=False, colorbar=False)
    assert len(fig.axes) == 1
    with pytest.raises(ValueError, match="results is empty"):
        plot_effective_receptive_fields({})


# --------------------------------------------------------------------------------------------------
# no global state


def test_no_pyplot_figures_and_no_rcparams_changes() -> None:
    import matplotlib.pyplot as plt

    before = dict(matplotlib.rcParams)
    n_open = len(plt.get_fignums())
    img, lab = _slice_and_label()
    label_overlay(img, lab)
    orthogonal_views(_volume())
    slice_probability_strip(np.array([0.2, 0.8]))
    assert len(plt.get_fignums()) == n_open
    assert dict(matplotlib.rcParams) == before


def test_default_feature_maps_of_monai_baselines() -> None:
    from monai.networks.nets import DenseNet, EfficientNetBN, UNet

    from medmamba.visualize import default_feature_fn

    x = torch.randn(1, 1, 32, 32)
    dense = DenseNet(2, 1, 2, init_features=8, growth_rate=4, block_config=(1, 1)).eval()
    eff = EfficientNetBN("efficientnet-b0", spatial_dims=2, in_channels=1, num_classes=2, pretrained=False).eval()
    unet = UNet(2, 1, 2, channels=(4, 8), strides=(2,)).eval()
    with torch.no_grad(), _fast_cpu():
        torch.testing.assert_close(default_feature_fn(dense)(x), dense.features(x))
        assert default_feature_fn(eff)(x).shape == (1, 1280, 1, 1)
        assert default_feature_fn(unet) is unet
    with _fast_cpu():
        res = effective_receptive_field(dense, (1, 32, 32), 1)
    assert res.feature_shape == (4, 4) and res.map.max() == 1.0
