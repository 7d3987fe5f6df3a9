"""The ablation stage: does synthetic tail data help, where, and by how much?

``config`` loads and validates ``configs/ablation/*.yaml``; ``arms`` is the
registry of arms (``resampling``: the ``real_resampled`` arm's repeat factors);
``runner`` runs the arms over seeds with cached, resumable stages; ``results`` defines the
``results.json`` contract; ``report`` renders it to Markdown and one
self-contained HTML file.
"""
