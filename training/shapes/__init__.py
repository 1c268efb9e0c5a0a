"""The shapes-world family: training (train.py, configs/) and its quality probes (quality.py)."""
