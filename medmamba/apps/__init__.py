"""Support code of the MONAI bundles under ``bundles/``, importable by dotted ``_target_`` paths.

One module per bundle (for example :mod:`medmamba.apps.segmentation` for
``bundles/mobilemamba_segmentation``). Modules are not imported here, so that a bundle loads only
what it uses.
"""

from __future__ import annotations

__all__: list[str] = []
