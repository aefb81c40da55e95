"""The PSRBench-style benchmark: generators, scoring, reports and the evaluate stage."""
