"""``python -m controlplane.cli``: the same as ``keyward``."""

from controlplane.cli import app

app(prog_name="keyward")
