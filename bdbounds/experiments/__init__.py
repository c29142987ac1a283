"""Research experiments built on the trainer: sweeps over bounds, data sets and seeds."""
