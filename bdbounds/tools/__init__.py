"""Command-line tools run once by hand, such as converting published weights."""
