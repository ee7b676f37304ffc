"""The command line: the entry point, main, one module per command, the value readers and the option tables."""
