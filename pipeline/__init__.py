"""exprlock: expression-preserving face dataset generation.

The library half of exprlock. Plain functions and torch modules, no orchestration imports, so
everything here can be called and tested without Prefect.
"""

__version__ = "0.1.0"
