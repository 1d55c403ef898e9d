"""Reproducible measurement runs that write JSON/Markdown results into benchmarks/results/.

Run from the project root as modules, e.g. `python -m benchmarks.calibrate` or `python -m benchmarks.session`;
each module's docstring gives its commands. Not installed with vramplan: the package is found from the root.
"""
