"""Episode store: recorded robot episodes in zarr, windows for training, stats for normalizers."""
