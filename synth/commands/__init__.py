"""One module per pipeline stage; each defines ``register(app: typer.Typer)``."""
