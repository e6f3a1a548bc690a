"""Data: sources, synthetic cells, preprocessing, the cache, splits and the datamodule."""
