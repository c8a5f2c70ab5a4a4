"""Headless subcommands of main.py, one module each; each provides ``register(subparsers)``."""
