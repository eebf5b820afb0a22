"""What several test modules share; no tests here (pytest collects only `test_*.py`).

Imported as `support.<module>`: pytest puts `tests/` on `sys.path` for its rootdir conftest (the default
"prepend" import mode), and `run_python` gives a child interpreter the same path.

- `paths`: the checkout's root and the Tiny Shakespeare mirror;
- `training`: a tiny corpus and recipe, subprocess and torchrun runs, metrics readers;
- `fake_tokenizer`: a byte-level tokenizer for the data tests;
- `serving`: a random chat model, and an app served on 127.0.0.1 in a thread.
"""
