"""The core fuzzer: ``.venv/bin/python -m fuzz.fuzz_core`` from the repository root (`make fuzz`);
tests/unit/test_fuzz_slice.py runs a slice of it."""
