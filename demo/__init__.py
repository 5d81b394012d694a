"""`make demo`: ``.venv/bin/python -m demo.run`` from the repository root."""
