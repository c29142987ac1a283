"""bdbounds: minimax training of energy-based models with bidirectional bounds."""
