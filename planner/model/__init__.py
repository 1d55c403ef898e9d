"""The model: its config, parameter counts, the catalog of known models, the generic path."""
