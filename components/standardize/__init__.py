"""SerialGen's standardizer: the reference analyser, the standardizer's training and its evaluation."""
