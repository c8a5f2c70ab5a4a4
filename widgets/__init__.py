"""Reusable Qt widgets for the studio. They import only Qt and superqt, never the engine."""
