"""The destination: the Destination, the guest it hosts, and the listener that serves several migrations."""
