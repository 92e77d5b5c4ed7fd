"""Reports: progress bars, tables and plots."""
