"""Recipes that train the embedded base models (not continual-learning methods): the image
base (base.py) and its audio/video extension (media.py)."""
