"""Files the project writes atomically get the umask's mode (0644 usually), not mkstemp's 0600: the lab's other
accounts must be able to read weights, manifests and images (a phantom-cpu run left 22 weight files at 0600)."""

import stat

import torch

from synth.io import current_umask, save_safetensors_atomic, write_json_atomic


def test_safetensors_and_json_written_atomically_are_readable_by_others(tmp_path):
    save_safetensors_atomic(tmp_path / "model.safetensors", {"w": torch.zeros(2)})
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    want = 0o666 & ~current_umask()
    for name in ("model.safetensors", "a.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
