"""The web pages of the sweep service and of `sweepctl ui` (pages.py), and their sessions (auth.py)."""
