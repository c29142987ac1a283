"""One engine for the sweeps of bound pairings (`toy_sweep`, `image_sweep`) and what reads them
(`bound_tightness`):

  grid     the runs (`RunSpec`), their config overrides, `--set`/`--pairs` and the shared flags
  runner   the recorded training of one run, worker processes, resuming, the sweep loop
  tables   statistics over seeds (`mean_std`), grouping into cells, CSV and Markdown
  figures  density grids, energy-gap curves, image panels
"""
