"""Command-line front ends: argument parsing and wiring only; the work is in the library."""
