"""Reading finished (or running) qstar runs: `qstar analyze` and `qstar report`.

cli.py (read and validate files, print tables) -> stats.py (pure statistics: distributions,
the seed's condition checks, sequence importance weights) -> plots.py (PNG, matplotlib Agg)
-> report.py (one offline HTML file). `alpha` is the weight on pi_theta throughout.
Not for: making samples (engine.pipeline) or changing run files: everything here only reads them.
"""
