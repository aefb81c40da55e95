"""Orchestration plumbing: the stage entry point, DVC lineage, MLflow tracking, the CLI, project scaffolding."""
