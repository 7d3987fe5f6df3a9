"""One flag spelling per command family (issue #37): ``synth`` commands spell flags with hyphens; the generator's
trainer keeps diffusers' ``train_text_to_image.py`` underscore names (docs/pipeline.md, "Flag spellings")."""

from __future__ import annotations

import typer

from synth.cli import app

#: accepted underscore spellings beside a hyphenated one: the classifier trainer's tracker flag, named as in
#: accelerate and diffusers (``--report_to``) because the same trainer also runs as ``accelerate launch``
ALIASES = {"--report_to"}


def _commands(group, path: str = ""):
    """Every leaf command under ``group`` (typer may ship its own click: groups are told by their ``commands``)."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, f"{path} {name}".strip())
        else:
            yield f"{path} {name}".strip(), command


def test_synth_commands_spell_flags_with_hyphens():
    found = {}
    for path, command in _commands(typer.main.get_command(app)):
        flags = [o for p in command.params for o in [*p.opts, *p.secondary_opts] if o.startswith("--")]
        found[path] = flags
        underscored = [f for f in flags if "_" in f and f not in ALIASES]
        assert not underscored, f"synth {path}: {underscored} (spell synth flags with hyphens)"
        for alias in ALIASES & set(flags):
            assert alias.replace("_", "-") in flags, f"synth {path}: {alias} without its hyphenated spelling"
    # the walk reached the commands, sub-commands included
    assert len(found) >= 15 and "--batch-size" in found["evaluate"] and "--report-to" in found["classify train"]
