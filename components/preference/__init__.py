"""PatchDPO: patch-quality estimation, its training data and the preference stage's run."""
