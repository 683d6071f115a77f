"""Summary tables, dvc plot data and sample grids."""
