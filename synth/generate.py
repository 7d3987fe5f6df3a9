"""``python -m synth.generate`` / ``accelerate launch -m synth.generate``: the ``synth generate`` command alone.

The code lives in :mod:`synth.inference`, one module per layer (config, model folder, planning, on-disk state,
pipeline, orchestration); this module re-exports its public names so ``from synth.generate import run,
GenerateConfig`` keeps working. A test that replaces a step patches the module that calls it
(``synth.inference.orchestration.load_pipeline``), not these re-exports.
"""

from synth.inference import *  # noqa: F401,F403 (the names in synth.inference.__all__)
from synth.inference import __all__  # noqa: F401

if __name__ == "__main__":
    from synth.commands.generate import main

    main()
