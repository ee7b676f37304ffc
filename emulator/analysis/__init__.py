"""Models and reports: the estimator, events, the Report and its schema, sweeps, plots and text display."""
