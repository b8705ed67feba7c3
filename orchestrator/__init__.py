"""Sweep spec, Tuner assembly, results writers and the command line."""
