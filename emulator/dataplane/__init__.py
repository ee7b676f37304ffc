"""Pages in flight: batches, codecs, the running digest, ZeroMQ channels, CURVE, the destination's channel threads, thread names and CPU."""
