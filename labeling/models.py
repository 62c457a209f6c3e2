"""Taxonomies, tags, agreement and exports arrive with issues 3 and 4."""
