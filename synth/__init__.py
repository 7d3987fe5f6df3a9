"""synth: synthetic tail-class chest X-ray augmentation (generator, filter, ablation).

The layers, bottom to top (each imports only the ones below it; ``tests/test_layout.py`` checks the rules):

* **core** -- ``taxonomy``, ``manifest``, ``csv_files``, ``errors``, ``io``, ``hashing``, ``cache_checksum``,
  ``model_files``, ``output_folder``, ``config``, ``distributed``, ``training``, ``image_datasets``, ``progress``,
  ``provenance``: the data model, atomic IO and output folders, the one hashing helper, checked model files, the
  config loader and the training toolkit. The ``classifier`` package uses only these.
* **shared helpers** -- ``readers``, ``splits``, ``stats``, ``prompts``, ``cooccurrence``, ``text_encoder`` and
  ``diffusion`` (the one diffusers-pipeline module).
* **stages** -- ``phantom``, ``prepare``, ``generator`` (training the diffusion model) and ``inference``
  (generating with it; the two share only :mod:`synth.diffusion`, never each other), the ``classifier`` package,
  and ``filtering`` (whose verifier is a classifier).
* **ablation** -- ``synth.ablation`` runs the stages and the classifier as one experiment (it may import
  ``classifier``; ``classifier`` never imports it).
* **commands** -- ``synth.cli``, ``synth.commands`` and the ``python -m`` entries (``synth.inference.__main__``).
"""

__version__ = "0.1.0"
