"""A Ray-agnostic CNN classification trainer and the thin Ray Tune wrapper around it."""
