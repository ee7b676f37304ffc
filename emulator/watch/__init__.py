"""`--watch`: a live page of a migration in the browser (docs/watch.md).

pagemap: each page's state, and the grid of cells the page draws; watcher: a Progress that
hears the source and samples its pages on a thread of its own; feed: the latest state for
any number of readers; server: the page and its event stream over HTTP; tee: one Progress
heard by several watchers; session: the three started and stopped together.
"""
