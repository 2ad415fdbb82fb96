"""The daemon's write-ahead journal on SQLite: append-only events, projections, replay."""
