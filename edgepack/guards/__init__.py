"""What protects the user's files and process: paths that must not overlap inputs, work folders, user code
that exits, signals, resource errors."""
