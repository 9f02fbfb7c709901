"""Named functions the MONAI bundles' configs call in place of long ``$`` expressions.

A bundle config (``bundles/*/configs/*.json``) reads best when each ``$`` expression is a short
call; the logic such an expression used to spell out inline lives here, documented and tested.
The functions live in the package rather than in a bundle's own ``scripts/`` folder because MONAI
puts a bundle's root on ``sys.path`` only when ``ConfigWorkflow.run`` starts, after the config's
``imports`` and ``initialize`` have been evaluated, and never for ``ckpt_export`` or
``verify_net_in_out``; a ``scripts`` package of each bundle would also clash by name.

One concept per module:

- :mod:`~medmamba.bundle.networks`: placing a network on its device and describing it in reports;
- :mod:`~medmamba.bundle.training`: the warm-up length, the class weights of a loss, the dense
  teacher a lesion-map student distils from;
- :mod:`~medmamba.bundle.distributed`: the handlers of a rank;
- :mod:`~medmamba.bundle.paths`: optional files passed on only when they exist;
- :mod:`~medmamba.bundle.datalists`: a training list with optional extra lists beside it;
- :mod:`~medmamba.bundle.threshold`: the classification thresholds a training run chose (the network's
  and the lesion rules');
- :mod:`~medmamba.bundle.flags`: on/off variables as typed on the command line.
"""

from __future__ import annotations

from .datalists import training_list
from .distributed import handlers_of_rank
from .flags import all_off, flag
from .networks import network_description, network_label, network_variant, to_device
from .paths import existing_file, model_file
from .threshold import bright_outlier_rule, dark_asymmetry_rule, lesion_rule, release_rule_threshold, release_threshold
from .training import class_weights, dense_teacher, warmup_steps

__all__ = [
    "all_off",
    "bright_outlier_rule",
    "dark_asymmetry_rule",
    "class_weights",
    "dense_teacher",
    "existing_file",
    "flag",
    "handlers_of_rank",
    "lesion_rule",
    "model_file",
    "network_description",
    "network_label",
    "network_variant",
    "release_rule_threshold",
    "release_threshold",
    "to_device",
    "training_list",
    "warmup_steps",
]
