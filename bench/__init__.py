"""The benchmark suite: the agent against the raw inference runtime, side by side, in one run.

Run ``python -m bench --help`` (from the repository root); see BENCHMARKS.md.
"""
