"""Ray connection and resources: where and on what trials run."""
