"""The source's run: the Source, its streams, the phases (pre-copy, stop-and-copy, post-copy), the policy, pacing and the recorder."""
