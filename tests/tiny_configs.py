"""Stage configs small enough for a whole pipeline in a test: 32 px, one epoch (shared by the end-to-end tests)."""

#: A 32 px convnext_atto label-verifier trained for one epoch.
TINY_VERIFIER = {
    "arch": "convnext_atto",
    "image_size": 32,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.002,
    "seed": 0,
    "num_workers": 0,
    "eval_batch_size": 256,
}
