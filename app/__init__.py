"""The studio window: state, controller, the single engine worker thread, sessions and settings.

Nothing here imports torch at module level; engine modules that need torch are imported
inside jobs that run on the worker thread, so the window appears before torch loads.
"""
