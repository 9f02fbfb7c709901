"""Matplotlib views of scans, labels, predictions, training logs and effective receptive fields.

Every plotting function returns a ``matplotlib.figure.Figure`` built without pyplot (no global state:
no ``rcParams`` changes, no figure registered with pyplot, no ``plt.show()``); where it makes sense it
takes an ``ax`` (or ``fig``) to draw into. Works under the Agg backend; in Jupyter display the
returned figure (``display(fig)``) or save it (``fig.savefig(path)``).

* :func:`orthogonal_views` - axial/coronal/sagittal slices through a point, CT window or MR range.
* :func:`label_overlay`, :func:`error_map`, :func:`prediction_overview` - label/prediction overlays
  with a class legend, and false positives/negatives.
* :func:`slice_probability_strip` - per-slice probabilities of a volume classifier.
* :func:`plot_training_curves` - loss/metric curves from TensorBoard or CSV/JSON logs.
* :func:`montage` - a grid of slices of a series.
* :func:`effective_receptive_field`, :func:`plot_effective_receptive_fields` - ERF maps (Figure 1 of
  the MobileMamba paper).
"""

from __future__ import annotations

from medmamba.visualize._common import VIEWS, display_range, extract_view, voxel_spacing
from medmamba.visualize.curves import (
    Curve,
    find_event_files,
    load_training_logs,
    plot_training_curves,
    read_metrics_file,
    read_tensorboard_scalars,
    smooth,
)
from medmamba.visualize.erf import (
    ERFResult,
    default_feature_fn,
    effective_receptive_field,
    erf_mass_radius,
    fill_zero_norm_weights,
    plot_effective_receptive_fields,
)
from medmamba.visualize.montage import montage, montage_indices
from medmamba.visualize.overlay import (
    ERROR_CATEGORIES,
    ERROR_COLORS,
    class_colors,
    error_categories,
    error_map,
    label_overlay,
    label_to_rgba,
    prediction_overview,
)
from medmamba.visualize.probability import slice_probabilities, slice_probability_strip
from medmamba.visualize.slices import orthogonal_views

__all__ = [
    "ERROR_CATEGORIES",
    "ERROR_COLORS",
    "VIEWS",
    "Curve",
    "ERFResult",
    "class_colors",
    "default_feature_fn",
    "display_range",
    "effective_receptive_field",
    "erf_mass_radius",
    "error_categories",
    "error_map",
    "extract_view",
    "fill_zero_norm_weights",
    "find_event_files",
    "label_overlay",
    "label_to_rgba",
    "load_training_logs",
    "montage",
    "montage_indices",
    "orthogonal_views",
    "plot_effective_receptive_fields",
    "plot_training_curves",
    "prediction_overview",
    "read_metrics_file",
    "read_tensorboard_scalars",
    "slice_probabilities",
    "slice_probability_strip",
    "smooth",
    "voxel_spacing",
]
