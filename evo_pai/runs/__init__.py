"""One run end to end: runner, run folder, checkpoint and resume, plots and summary, Python API."""
