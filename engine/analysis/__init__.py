"""Reading finished (or running) qstar runs: `qstar analyze` and `qstar report`.

cli.py (read and validate files) -> stats.py (pure statistics: distributions, the seed's
condition checks, sequence importance weights), answers.py (final-answer rule, reward hook) ->
importance.py (pi_theta's accuracy estimated from any sampler's samples) -> tables.py (text),
plots.py (PNG, matplotlib Agg), report.py (one offline HTML file). `alpha` is the weight on
pi_theta throughout.
Not for: making samples (engine.pipeline) or changing run files: everything here only reads them.
"""
