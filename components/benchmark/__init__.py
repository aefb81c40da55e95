"""The PSRBench-style benchmark as a library: reference generators, scoring, reports and paired
comparisons (the evaluate stage, ``components/evaluate.py``, calls ``scoring.benchmark``)."""
