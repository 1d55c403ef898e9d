"""The hardware: GPU cards (catalog, detection), host memory, calibration of the memory model."""
