"""jaxmod: decompose trained classifiers into per-class modules and recompose them, in JAX."""

__version__ = "0.1.0"
