"""Research experiments over the trainer: sweeps of bound pairings and measurements of the bounds."""
