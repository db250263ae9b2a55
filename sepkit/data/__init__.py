"""Data: mixture tables and their renderer, datasets, the synthetic corpus, the datamodule."""
