"""Datasets -> prepared folders (images, manifest.csv, classes.json); adapters per source format."""
