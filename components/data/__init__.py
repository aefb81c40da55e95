"""Datasets: manifests, image grids, synthesis of the world's datasets and the quality gate."""
