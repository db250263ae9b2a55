"""sepkit: a PyTorch Lightning research toolkit for single-channel speech separation."""

__version__ = "0.1.0"
