"""``python -m synth.inference`` / ``accelerate launch -m synth.inference``: the ``synth generate`` command alone."""

from synth.commands.generate import main

if __name__ == "__main__":
    main()
