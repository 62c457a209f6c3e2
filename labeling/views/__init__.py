"""Labeling views: tagging endpoints (tags.py), the review pass (review.py), the study dashboard (dashboard.py)."""
