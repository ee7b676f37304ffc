"""The guest: its memory and writers, its disk, its configuration (scenario), missing pages in post-copy, and the checks on what it became."""
