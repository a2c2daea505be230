"""Data: discover real layouts, synthesise the embedded benchmark, load images for training."""
