"""The run directory: its files and lock, its one writer, and the feeds that read it."""
